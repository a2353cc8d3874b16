"""The web dashboard fleetd serves under `/dashboard/` on its HTTP API listener.

Plain HTML, CSS and JavaScript shipped in this package (`static/`, no build step, nothing
fetched from elsewhere), and a few JSON and Server-Sent-Events endpoints under
`/dashboard/api/` that go through the same service layer as the gRPC and HTTP v1 front ends.
The live feed is the gRPC `Watch` stream's own code, relayed as SSE. Authentication is the
listener's: mutual TLS on TCP, the socket's permissions on the unix socket; `fleetctl
dashboard` is the loopback proxy a browser uses.
"""

from fleetd.dashboard._server import PREFIX, Dashboard

__all__ = ["PREFIX", "Dashboard"]
