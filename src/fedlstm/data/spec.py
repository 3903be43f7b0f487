"""What a dataset or a flow log is: its columns, types, labels, attack families and files.

A spec is plain data (pydantic), so it travels inside a model bundle and a bundle can read new
traffic without the training data or the built-in tables (`schemas`, `flowschemas`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

NORMAL_FAMILY = "normal"
UNKNOWN_FAMILY = "unknown"


class FileSpec(BaseModel):
    """One published file of a dataset, in the role it plays in the evaluation protocols."""

    role: str  # e.g. "train", "test", "test-21"
    name: str  # file name as published; alternatives cover renamed or compressed copies
    alternatives: list[str] = Field(default_factory=list)
    rows: int | None = None
    sha256: str | None = None
    url: str | None = None  # publisher's download address; None where the publisher needs a form


class DatasetSpec(BaseModel):
    name: str
    folder: str  # sub-folder of the data directory
    title: str
    columns: list[str]
    categorical: list[str]
    label: str
    ignore: list[str] = Field(default_factory=list)  # present in the file but never a feature
    has_header: bool = False
    label_suffix: str = ""  # KDD99 labels end with '.'
    normal_labels: list[str] = Field(default_factory=lambda: ["normal"])
    # Column holding the attack family directly (UNSW-NB15); otherwise families come from `families`.
    family_column: str | None = None
    families: dict[str, str] = Field(default_factory=dict)  # attack name -> family
    family_order: list[str] = Field(default_factory=list)
    time_column: str | None = None
    order_note: str = ""
    files: list[FileSpec] = Field(default_factory=list)
    identify_by_rows: bool = False  # UNSW-NB15 publishes its two partitions under swapped names
    # Flow logs of the user's own (fedlstm.data.flowschemas): how to read them and what to key on.
    # zeek: TSV with #fields/#types header lines (or Zeek's JSON, one object per line);
    # json: one JSON object per line, keys are column names
    format: Literal["csv", "zeek", "json"] = "csv"
    delimiter: str = ","
    missing_values: list[str] = Field(default_factory=list)  # tokens that mean "unset" ('-')
    fill_missing: float | None = None  # numeric value for unset/NaN/Inf (counted); None: bad row
    optional_columns: list[str] = Field(default_factory=list)  # may be absent (labels)
    entity_column: str | None = None  # windows are formed per entity (e.g. source host)
    # Other header spellings of a column the spec names (CICFlowMeter: 'Source IP' for 'Src IP');
    # headers are also matched ignoring case, spaces and punctuation ('src_ip', ' Label').
    column_aliases: dict[str, list[str]] = Field(default_factory=dict)
    # The entity and time columns may be absent when the file has none of the `ignore`
    # (identifier) columns either: a layout that drops identifiers (CIC-IDS2017's
    # MachineLearningCVE CSVs). Otherwise an absent entity or time column is an error.
    identifiers_optional: bool = False
    stop_at: str | None = None  # a line equal to this ends the records (nfdump's "Summary")
    defaults: dict[str, float | str] = Field(default_factory=dict)  # for fields a record omits
    # Numeric columns that cannot be negative; None: those named like counts (bytes, packets,
    # durations: `flowschemas.count_like`) in which no training record was negative.
    nonnegative: list[str] | None = None
    max_bad_share: float | None = None  # training: most malformed lines (share) before failing
    column_notes: dict[str, str] = Field(default_factory=dict)  # why a column has its role

    @property
    def feature_columns(self) -> list[str]:
        excluded = {self.label, *self.ignore}
        if self.family_column:
            excluded.add(self.family_column)
        return [c for c in self.columns if c not in excluded]

    @property
    def numeric_columns(self) -> list[str]:
        return [c for c in self.feature_columns if c not in self.categorical]

    def file(self, role: str) -> FileSpec:
        for f in self.files:
            if f.role == role:
                return f
        raise KeyError(f"dataset {self.name!r} has no file with role {role!r}; roles: {[f.role for f in self.files]}")

    def family_of(self, attack: str) -> str:
        if attack in self.normal_labels:
            return NORMAL_FAMILY
        return self.families.get(attack, UNKNOWN_FAMILY)
