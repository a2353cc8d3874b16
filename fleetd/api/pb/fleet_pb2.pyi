from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Machine(_message.Message):
    __slots__ = ("id", "ip", "metadata", "hostname", "version", "engine_leader", "api_address", "state", "cpu_milli", "memory_bytes", "host_reserved_cpu_milli", "host_reserved_memory_bytes", "reserved_cpu_milli", "reserved_memory_bytes")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_LEADER_FIELD_NUMBER: _ClassVar[int]
    API_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLI_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_RESERVED_CPU_MILLI_FIELD_NUMBER: _ClassVar[int]
    HOST_RESERVED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_CPU_MILLI_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    ip: str
    metadata: _containers.ScalarMap[str, str]
    hostname: str
    version: str
    engine_leader: bool
    api_address: str
    state: str
    cpu_milli: int
    memory_bytes: int
    host_reserved_cpu_milli: int
    host_reserved_memory_bytes: int
    reserved_cpu_milli: int
    reserved_memory_bytes: int
    def __init__(self, id: _Optional[str] = ..., ip: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., hostname: _Optional[str] = ..., version: _Optional[str] = ..., engine_leader: _Optional[bool] = ..., api_address: _Optional[str] = ..., state: _Optional[str] = ..., cpu_milli: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., host_reserved_cpu_milli: _Optional[int] = ..., host_reserved_memory_bytes: _Optional[int] = ..., reserved_cpu_milli: _Optional[int] = ..., reserved_memory_bytes: _Optional[int] = ...) -> None: ...

class ListMachinesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMachinesResponse(_message.Message):
    __slots__ = ("machines",)
    MACHINES_FIELD_NUMBER: _ClassVar[int]
    machines: _containers.RepeatedCompositeFieldContainer[Machine]
    def __init__(self, machines: _Optional[_Iterable[_Union[Machine, _Mapping]]] = ...) -> None: ...

class Unit(_message.Message):
    __slots__ = ("name", "text", "hash", "desired_state", "current_state", "machine_ids", "unschedulable_reason", "description", "is_global", "move_phase", "move_from", "move_to", "move_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STATE_FIELD_NUMBER: _ClassVar[int]
    MACHINE_IDS_FIELD_NUMBER: _ClassVar[int]
    UNSCHEDULABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IS_GLOBAL_FIELD_NUMBER: _ClassVar[int]
    MOVE_PHASE_FIELD_NUMBER: _ClassVar[int]
    MOVE_FROM_FIELD_NUMBER: _ClassVar[int]
    MOVE_TO_FIELD_NUMBER: _ClassVar[int]
    MOVE_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    text: str
    hash: str
    desired_state: str
    current_state: str
    machine_ids: _containers.RepeatedScalarFieldContainer[str]
    unschedulable_reason: str
    description: str
    is_global: bool
    move_phase: str
    move_from: str
    move_to: str
    move_reason: str
    def __init__(self, name: _Optional[str] = ..., text: _Optional[str] = ..., hash: _Optional[str] = ..., desired_state: _Optional[str] = ..., current_state: _Optional[str] = ..., machine_ids: _Optional[_Iterable[str]] = ..., unschedulable_reason: _Optional[str] = ..., description: _Optional[str] = ..., is_global: _Optional[bool] = ..., move_phase: _Optional[str] = ..., move_from: _Optional[str] = ..., move_to: _Optional[str] = ..., move_reason: _Optional[str] = ...) -> None: ...

class ListUnitsRequest(_message.Message):
    __slots__ = ("with_text",)
    WITH_TEXT_FIELD_NUMBER: _ClassVar[int]
    with_text: bool
    def __init__(self, with_text: _Optional[bool] = ...) -> None: ...

class ListUnitsResponse(_message.Message):
    __slots__ = ("units",)
    UNITS_FIELD_NUMBER: _ClassVar[int]
    units: _containers.RepeatedCompositeFieldContainer[Unit]
    def __init__(self, units: _Optional[_Iterable[_Union[Unit, _Mapping]]] = ...) -> None: ...

class GetUnitRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CreateUnitRequest(_message.Message):
    __slots__ = ("name", "text", "desired_state", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    text: str
    desired_state: str
    replace: bool
    def __init__(self, name: _Optional[str] = ..., text: _Optional[str] = ..., desired_state: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class CreateUnitResponse(_message.Message):
    __slots__ = ("unit", "created")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    unit: Unit
    created: bool
    def __init__(self, unit: _Optional[_Union[Unit, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class CreateUnitsRequest(_message.Message):
    __slots__ = ("units",)
    UNITS_FIELD_NUMBER: _ClassVar[int]
    units: _containers.RepeatedCompositeFieldContainer[CreateUnitRequest]
    def __init__(self, units: _Optional[_Iterable[_Union[CreateUnitRequest, _Mapping]]] = ...) -> None: ...

class CreateUnitOutcome(_message.Message):
    __slots__ = ("response", "code", "message")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    response: CreateUnitResponse
    code: int
    message: str
    def __init__(self, response: _Optional[_Union[CreateUnitResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class CreateUnitsResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[CreateUnitOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[CreateUnitOutcome, _Mapping]]] = ...) -> None: ...

class SetUnitTargetStateRequest(_message.Message):
    __slots__ = ("name", "desired_state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    desired_state: str
    def __init__(self, name: _Optional[str] = ..., desired_state: _Optional[str] = ...) -> None: ...

class DestroyUnitRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DestroyUnitResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnitState(_message.Message):
    __slots__ = ("name", "machine_id", "machine_ip", "hash", "state", "load_state", "active_state", "sub_state", "main_pid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    MACHINE_IP_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOAD_STATE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STATE_FIELD_NUMBER: _ClassVar[int]
    SUB_STATE_FIELD_NUMBER: _ClassVar[int]
    MAIN_PID_FIELD_NUMBER: _ClassVar[int]
    name: str
    machine_id: str
    machine_ip: str
    hash: str
    state: str
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int
    def __init__(self, name: _Optional[str] = ..., machine_id: _Optional[str] = ..., machine_ip: _Optional[str] = ..., hash: _Optional[str] = ..., state: _Optional[str] = ..., load_state: _Optional[str] = ..., active_state: _Optional[str] = ..., sub_state: _Optional[str] = ..., main_pid: _Optional[int] = ...) -> None: ...

class ListUnitStatesRequest(_message.Message):
    __slots__ = ("names", "machine_id")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    machine_id: str
    def __init__(self, names: _Optional[_Iterable[str]] = ..., machine_id: _Optional[str] = ...) -> None: ...

class ListUnitStatesResponse(_message.Message):
    __slots__ = ("states",)
    STATES_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedCompositeFieldContainer[UnitState]
    def __init__(self, states: _Optional[_Iterable[_Union[UnitState, _Mapping]]] = ...) -> None: ...

class ExplainUnitRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("machine_id", "check", "detail")
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    machine_id: str
    check: str
    detail: str
    def __init__(self, machine_id: _Optional[str] = ..., check: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("name", "desired_state", "scheduled_on", "feasible", "rejected", "unschedulable_reason", "scores")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_ON_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    UNSCHEDULABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    name: str
    desired_state: str
    scheduled_on: _containers.RepeatedScalarFieldContainer[str]
    feasible: _containers.RepeatedScalarFieldContainer[str]
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    unschedulable_reason: str
    scores: _containers.RepeatedCompositeFieldContainer[MachineScore]
    def __init__(self, name: _Optional[str] = ..., desired_state: _Optional[str] = ..., scheduled_on: _Optional[_Iterable[str]] = ..., feasible: _Optional[_Iterable[str]] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., unschedulable_reason: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[MachineScore, _Mapping]]] = ...) -> None: ...

class SetMachineMetadataRequest(_message.Message):
    __slots__ = ("machine_id", "set", "delete")
    class SetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    machine_id: str
    set: _containers.ScalarMap[str, str]
    delete: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, machine_id: _Optional[str] = ..., set: _Optional[_Mapping[str, str]] = ..., delete: _Optional[_Iterable[str]] = ...) -> None: ...

class UnitStatusRequest(_message.Message):
    __slots__ = ("name", "machine_id", "lines")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    name: str
    machine_id: str
    lines: int
    def __init__(self, name: _Optional[str] = ..., machine_id: _Optional[str] = ..., lines: _Optional[int] = ...) -> None: ...

class UnitStatusResponse(_message.Message):
    __slots__ = ("machine_id", "output", "exit_code")
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    machine_id: str
    output: str
    exit_code: int
    def __init__(self, machine_id: _Optional[str] = ..., output: _Optional[str] = ..., exit_code: _Optional[int] = ...) -> None: ...

class RestartUnitRequest(_message.Message):
    __slots__ = ("name", "machine_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    machine_id: str
    def __init__(self, name: _Optional[str] = ..., machine_id: _Optional[str] = ...) -> None: ...

class JournalRequest(_message.Message):
    __slots__ = ("name", "machine_id", "lines", "output", "follow")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    machine_id: str
    lines: int
    output: str
    follow: bool
    def __init__(self, name: _Optional[str] = ..., machine_id: _Optional[str] = ..., lines: _Optional[int] = ..., output: _Optional[str] = ..., follow: _Optional[bool] = ...) -> None: ...

class JournalChunk(_message.Message):
    __slots__ = ("machine_id", "data")
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    machine_id: str
    data: bytes
    def __init__(self, machine_id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("start_revision", "machines", "units", "states", "names")
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    MACHINES_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    start_revision: int
    machines: bool
    units: bool
    states: bool
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, start_revision: _Optional[int] = ..., machines: _Optional[bool] = ..., units: _Optional[bool] = ..., states: _Optional[bool] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("machines", "units", "states")
    MACHINES_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    machines: _containers.RepeatedCompositeFieldContainer[Machine]
    units: _containers.RepeatedCompositeFieldContainer[Unit]
    states: _containers.RepeatedCompositeFieldContainer[UnitState]
    def __init__(self, machines: _Optional[_Iterable[_Union[Machine, _Mapping]]] = ..., units: _Optional[_Iterable[_Union[Unit, _Mapping]]] = ..., states: _Optional[_Iterable[_Union[UnitState, _Mapping]]] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("kind", "revision", "snapshot", "machine", "unit", "state", "name", "machine_id")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[WatchEvent.Kind]
        SNAPSHOT: _ClassVar[WatchEvent.Kind]
        MACHINE_PUT: _ClassVar[WatchEvent.Kind]
        MACHINE_DELETED: _ClassVar[WatchEvent.Kind]
        UNIT_PUT: _ClassVar[WatchEvent.Kind]
        UNIT_DELETED: _ClassVar[WatchEvent.Kind]
        STATE_PUT: _ClassVar[WatchEvent.Kind]
        STATE_DELETED: _ClassVar[WatchEvent.Kind]
    KIND_UNSPECIFIED: WatchEvent.Kind
    SNAPSHOT: WatchEvent.Kind
    MACHINE_PUT: WatchEvent.Kind
    MACHINE_DELETED: WatchEvent.Kind
    UNIT_PUT: WatchEvent.Kind
    UNIT_DELETED: WatchEvent.Kind
    STATE_PUT: WatchEvent.Kind
    STATE_DELETED: WatchEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    kind: WatchEvent.Kind
    revision: int
    snapshot: Snapshot
    machine: Machine
    unit: Unit
    state: UnitState
    name: str
    machine_id: str
    def __init__(self, kind: _Optional[_Union[WatchEvent.Kind, str]] = ..., revision: _Optional[int] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., machine: _Optional[_Union[Machine, _Mapping]] = ..., unit: _Optional[_Union[Unit, _Mapping]] = ..., state: _Optional[_Union[UnitState, _Mapping]] = ..., name: _Optional[str] = ..., machine_id: _Optional[str] = ...) -> None: ...

class DrainMachineRequest(_message.Message):
    __slots__ = ("machine", "pinned", "include_global")
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_GLOBAL_FIELD_NUMBER: _ClassVar[int]
    machine: str
    pinned: str
    include_global: bool
    def __init__(self, machine: _Optional[str] = ..., pinned: _Optional[str] = ..., include_global: _Optional[bool] = ...) -> None: ...

class UndrainMachineRequest(_message.Message):
    __slots__ = ("machine",)
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    machine: str
    def __init__(self, machine: _Optional[str] = ...) -> None: ...

class MoveUnitRequest(_message.Message):
    __slots__ = ("name", "machine")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    machine: str
    def __init__(self, name: _Optional[str] = ..., machine: _Optional[str] = ...) -> None: ...

class MoveUnitResponse(_message.Message):
    __slots__ = ("from_machine", "to_machine")
    FROM_MACHINE_FIELD_NUMBER: _ClassVar[int]
    TO_MACHINE_FIELD_NUMBER: _ClassVar[int]
    from_machine: str
    to_machine: str
    def __init__(self, from_machine: _Optional[str] = ..., to_machine: _Optional[str] = ...) -> None: ...

class MachineScore(_message.Message):
    __slots__ = ("machine_id", "score", "detail")
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    machine_id: str
    score: float
    detail: str
    def __init__(self, machine_id: _Optional[str] = ..., score: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...
