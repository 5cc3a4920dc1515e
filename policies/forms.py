"""Request forms: the fields a requester fills in, and checking what they submitted."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from policies.iso3166 import is_country_code
from policies.units import parse_date
from policies.vocab import FieldType


@dataclass(frozen=True)
class FormField:
    """One field of a request form."""

    name: str
    type: FieldType
    required: bool = False
    max_length: int | None = None
    options: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form (absent settings left out)."""
        found: dict[str, object] = {
            "name": self.name,
            "type": self.type.value,
            "required": self.required,
            "max_length": self.max_length,
            "options": list(self.options),
        }
        return {key: value for key, value in found.items() if value not in (None, [])}


def validate_form(fields: Sequence[FormField], values: Mapping[str, object]) -> list[str]:
    """Every problem with submitted `values` for the form `fields`, as sentences; [] if valid."""
    known = {field.name for field in fields}
    problems = [f"'{name}' is not a field of this form." for name in values if name not in known]
    for field in fields:
        problems.extend(_problems(field, values.get(field.name)))
    return problems


def _problems(field: FormField, value: object) -> list[str]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return [f"Field '{field.name}' is required."] if field.required else []
    problem = _CHECKS[field.type](field, value)
    return [f"Field '{field.name}' {problem}."] if problem else []


def _check_text(field: FormField, value: object) -> str | None:
    if not isinstance(value, str):
        return "must be text"
    if field.max_length is not None and len(value) > field.max_length:
        return f"must be at most {field.max_length} characters long; it has {len(value)}"
    return None


def _check_checkbox(field: FormField, value: object) -> str | None:
    if not isinstance(value, bool):
        return "must be checked or unchecked (true or false)"
    return "must be checked" if field.required and not value else None


def _check_date(field: FormField, value: object) -> str | None:
    if isinstance(value, date) or (isinstance(value, str) and _is_date(value)):
        return None
    return f"must be a date written YYYY-MM-DD; got {value!r}"


def _check_country(field: FormField, value: object) -> str | None:
    if isinstance(value, str) and is_country_code(value):
        return None
    return f"must be an ISO 3166-1 alpha-2 country code such as DE; got {value!r}"


def _check_select(field: FormField, value: object) -> str | None:
    if value in field.options:
        return None
    return f"must be one of {', '.join(field.options)}; got {value!r}"


def _is_date(text: str) -> bool:
    try:
        parse_date(text)
    except ValueError:
        return False
    return True


_CHECKS: dict[FieldType, Callable[[FormField, object], str | None]] = {
    FieldType.CHECKBOX: _check_checkbox,
    FieldType.COUNTRY: _check_country,
    FieldType.DATE: _check_date,
    FieldType.SELECT: _check_select,
    FieldType.TEXT: _check_text,
}
