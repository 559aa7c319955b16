"""Mapping from integer label codes to named binary target channels.

A mapping is written as ``"mito=191,synapse=223,glia=159"``: comma-separated
``name=code`` entries, where a class may own several codes separated by ``|``
(``"membrane=0|32|64|96|128"``) and the reserved name ``ignore`` lists codes to leave out
of the loss (``"mito=255,ignore=128"``). Channels follow the order of the string. Labels
are (Z, Y, X) or (Y, X) integer arrays; targets put the class channel first: (C, Z, Y, X)
or (C, Y, X).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

IGNORE = "ignore"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class ClassMappingError(ValueError):
    """A mapping string or code table that cannot be used, or codes absent from the labels."""


def _parse_code(text: str, entry: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"\d+", text):
        raise ClassMappingError(f"label code {text!r} in {entry!r} is not a non-negative integer")
    return int(text)


@dataclass(frozen=True)
class ClassMapping:
    """Named classes, each a tuple of label codes, plus codes to ignore.

    Build with :meth:`parse` (from a string) or :meth:`from_codes` (from a dict); both check
    that names are unique identifiers and that no code belongs to two classes or to a class
    and ``ignore``.
    """

    classes: tuple[tuple[str, tuple[int, ...]], ...]
    ignore: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.classes:
            raise ClassMappingError("a class mapping needs at least one class")
        seen: dict[int, str] = {}
        names: set[str] = set()
        for name, codes in self.classes:
            if not _NAME.match(name) or name == IGNORE:
                raise ClassMappingError(
                    f"class name {name!r} must be an identifier (letters, digits, _ or -) other than {IGNORE!r}"
                )
            if name in names:
                raise ClassMappingError(f"class {name!r} is given twice")
            names.add(name)
            if not codes:
                raise ClassMappingError(f"class {name!r} has no label codes")
            for code in codes:
                if isinstance(code, bool) or not isinstance(code, (int, np.integer)) or code < 0:
                    raise ClassMappingError(
                        f"label code {code!r} of class {name!r} is not a non-negative integer"
                    )
                if code in seen:
                    raise ClassMappingError(f"label code {code} belongs to both {seen[code]!r} and {name!r}")
                seen[code] = name
        for code in self.ignore:
            if code in seen:
                raise ClassMappingError(f"label code {code} is both ignored and class {seen[code]!r}")

    @classmethod
    def parse(cls, text: str) -> ClassMapping:
        """Parse ``"name=code[|code...],...[,ignore=code|...]"``; :class:`ClassMappingError` if malformed."""
        if not isinstance(text, str) or not text.strip():
            raise ClassMappingError(f"empty class mapping {text!r}; expected e.g. 'mito=191,synapse=223'")
        classes: list[tuple[str, tuple[int, ...]]] = []
        ignore: list[int] = []
        for entry in text.split(","):
            name, sep, codes_text = entry.partition("=")
            name = name.strip()
            if not sep or not name or not codes_text.strip():
                raise ClassMappingError(
                    f"entry {entry.strip()!r} of {text!r} is not of the form name=code[|code...]"
                )
            codes = tuple(_parse_code(part, entry.strip()) for part in codes_text.split("|"))
            if name == IGNORE:
                ignore.extend(codes)
            else:
                classes.append((name, codes))
        return cls(tuple(classes), tuple(dict.fromkeys(ignore)))

    @classmethod
    def from_codes(cls, codes: Mapping[str, int | Iterable[int]], ignore: Iterable[int] = ()) -> ClassMapping:
        """Build from ``{"mito": 191, "membrane": (0, 32)}``; order of the dict is channel order."""
        classes = tuple(
            (name, (int(value),) if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value))
            for name, value in codes.items()
        )
        return cls(classes, tuple(int(v) for v in ignore))

    def __str__(self) -> str:
        """The canonical mapping string; ``ClassMapping.parse(str(m)) == m``."""
        parts = [f"{name}={'|'.join(map(str, codes))}" for name, codes in self.classes]
        if self.ignore:
            parts.append(f"{IGNORE}={'|'.join(map(str, self.ignore))}")
        return ",".join(parts)

    def single_codes(self) -> dict[str, int]:
        """Class name -> its one label code, for evaluation, which compares one code per class."""
        several = [name for name, codes in self.classes if len(codes) > 1]
        if several:
            raise ClassMappingError(
                f"classes {', '.join(several)} have several codes in {self}; evaluation needs one code per class "
                "(relabel the ground truth, e.g. merge the codes into one)"
            )
        return {name: codes[0] for name, codes in self.classes}

    @property
    def names(self) -> tuple[str, ...]:
        """Class names in channel order."""
        return tuple(name for name, _ in self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def all_codes(self) -> tuple[int, ...]:
        """Every code the mapping names (classes, then ignore)."""
        return tuple(code for _, codes in self.classes for code in codes) + self.ignore

    def codes(self, name: str) -> tuple[int, ...]:
        """Label codes of class ``name``."""
        for class_name, codes in self.classes:
            if class_name == name:
                return codes
        raise KeyError(f"no class {name!r} in mapping {self}; classes: {', '.join(self.names)}")

    def _codes_present(self, labels: Any, max_slices: int | None) -> set[int]:
        """The label values in `labels`, read as `validate` says (evenly spaced slices first)."""
        depth = labels.shape[0] if len(labels.shape) == 3 else 0
        if max_slices is None or depth <= max_slices:
            return set(np.unique(self._check_labels(labels[...])).tolist())
        sampled = np.unique(np.linspace(0, depth - 1, max_slices).round().astype(int)).tolist()
        present: set[int] = set()
        for z in sampled:
            present.update(np.unique(self._check_labels(labels[z])).tolist())
        for start in range(0, depth, max_slices):  # then slabs in order (one read per slab, not per slice)
            if set(self.all_codes) <= present:
                break
            present.update(np.unique(self._check_labels(labels[start : start + max_slices])).tolist())
        return present

    @staticmethod
    def _check_labels(labels: npt.ArrayLike) -> np.ndarray:
        array = np.asarray(labels)
        if array.dtype == bool:
            return array.astype(np.uint8)
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"labels must be an integer array, got dtype {array.dtype}")
        return array

    def apply(self, labels: npt.ArrayLike, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """Binary targets, one channel per class: (Z, Y, X) or (Y, X) → (C, Z, Y, X) or (C, Y, X).

        ``dtype`` is float32 by default (loss-ready); pass ``np.uint8`` to save memory.
        """
        array = self._check_labels(labels)
        out = np.empty((self.num_classes, *array.shape), dtype=dtype)
        for channel, (_, codes) in enumerate(self.classes):
            out[channel] = np.isin(array, codes)
        return out

    def ignore_mask(self, labels: npt.ArrayLike) -> np.ndarray:
        """True where the label is an ``ignore`` code; same shape as ``labels``."""
        array = self._check_labels(labels)
        if not self.ignore:
            return np.zeros(array.shape, dtype=bool)
        return np.isin(array, self.ignore)

    def validate(self, labels: Any, max_slices: int | None = 16, allow_empty: bool = False) -> None:
        """Check that every code of the mapping occurs in ``labels``.

        ``labels`` is a (Z, Y, X) array-like (lazy volumes are fine) or a (Y, X) array. For
        volumes with more than ``max_slices`` slices, that many evenly spaced slices are read
        first (``None`` reads all at once); only a code missing from them makes it read the volume
        in slabs of ``max_slices`` until every code is found, so a code that is rare along z
        (synapses) is found without reading every slice of a common case. Raises :class:`ClassMappingError`
        naming the codes that are missing and the codes that do occur. With ``allow_empty``, labels
        holding only 0 (not a code of the mapping) are an annotation without foreground: a warning,
        not an error.
        """
        present = self._codes_present(labels, max_slices)
        missing = [code for code in self.all_codes if code not in present]
        if missing and allow_empty and present <= {0} and 0 not in self.all_codes:
            source = getattr(labels, "path", "labels")
            warnings.warn(
                f"{source}: no voxel of {', '.join(self.names)} in the labels (only background, code 0); "
                "training on it teaches background only",
                UserWarning,
                stacklevel=2,
            )
            return
        if missing:
            owners = {code: name for name, codes in self.classes for code in codes} | dict.fromkeys(
                self.ignore, IGNORE
            )
            named = ", ".join(f"{code} ({owners[code]})" for code in missing)
            raise ClassMappingError(
                f"label codes {named} of mapping '{self}' do not occur in the labels; "
                f"codes present: {sorted(present)}"
            )
