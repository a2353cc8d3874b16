"""fleetd's API: one service layer, gRPC (and later HTTP v1) front ends."""
