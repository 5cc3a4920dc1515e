"""Validation errors for policy and pack documents."""

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyIssue:
    """One problem in a document: where (path and 1-based line) and what."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "unknown line"
        return f"{self.path or '<root>'} ({where}): {self.message}"


class PolicyError(ValueError):
    """A document failed validation; carries every issue found, not just the first."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = issues


class PackError(PolicyError):
    """A jurisdiction pack file failed validation."""

    def __init__(self, issues: list[PolicyIssue], source: str) -> None:
        super().__init__(issues)
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}:\n{super().__str__()}"
