"""Pure model of fleet units: names, unit files, [X-Fleet] options and hashes.

No I/O happens here; every invalid input raises a UnitError subclass whose message names
the unit and the problem.
"""

from fleetd.unit._errors import InvalidUnitFile, InvalidUnitName, InvalidXFleetOptions, UnitError
from fleetd.unit._glob import glob_match
from fleetd.unit._model import (
    XFLEET_OPTION_ALIASES,
    XFLEET_SECTION,
    Unit,
    UnitFile,
    XFleet,
    expand_specifiers,
    split_items,
    xfleet_options,
)
from fleetd.unit._name import (
    MAX_UNIT_NAME_LENGTH,
    UNIT_SUFFIXES,
    UnitName,
    has_known_suffix,
    normalize_name,
    parse_name,
    validate_name,
)
from fleetd.unit._parse import MAX_UNIT_FILE_BYTES

__all__ = [
    "MAX_UNIT_FILE_BYTES",
    "MAX_UNIT_NAME_LENGTH",
    "UNIT_SUFFIXES",
    "XFLEET_OPTION_ALIASES",
    "XFLEET_SECTION",
    "InvalidUnitFile",
    "InvalidUnitName",
    "InvalidXFleetOptions",
    "Unit",
    "UnitError",
    "UnitFile",
    "UnitName",
    "XFleet",
    "expand_specifiers",
    "glob_match",
    "has_known_suffix",
    "normalize_name",
    "parse_name",
    "split_items",
    "validate_name",
    "xfleet_options",
]
