"""Column kinds: which modality (or role) each column of a table plays."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    NUMERIC = "numeric"
    CATEGORY = "category"


class Role(StrEnum):
    """Columns that are not model inputs."""

    ID = "id"
    LABEL = "label"  # a candidate target; the run config says which columns are targets
    SPLIT = "split"
    GROUP = "group"  # e.g. speaker: keeps a group inside one split
    IGNORE = "ignore"


ColumnKind = Modality | Role

MEDIA_MODALITIES = (Modality.IMAGE, Modality.AUDIO)
# Inputs that group every column of their modality into one (B, N) tensor.
GROUPED_MODALITIES = (Modality.NUMERIC, Modality.CATEGORY)


class ColumnSchema(BaseModel):
    name: str
    kind: Modality | Role
    reason: str = Field("", description="why inference chose this kind, shown by `data inspect`")


class TableSchema(BaseModel):
    columns: list[ColumnSchema]

    def kind_of(self, column: str) -> Modality | Role:
        for c in self.columns:
            if c.name == column:
                return c.kind
        raise KeyError(f"column '{column}' is not in the schema; columns: {[c.name for c in self.columns]}")

    def columns_of(self, kind: Modality | Role) -> list[str]:
        return [c.name for c in self.columns if c.kind == kind]

    def input_columns(self) -> list[str]:
        return [c.name for c in self.columns if isinstance(c.kind, Modality)]

    def input_names(self) -> dict[str, Modality]:
        """Model inputs: one per text/image/audio column, one 'numeric' and one 'category' group."""
        names: dict[str, Modality] = {}
        for c in self.columns:
            if isinstance(c.kind, Modality):
                names[c.kind.value if c.kind in GROUPED_MODALITIES else c.name] = c.kind
        return dict(sorted(names.items()))
