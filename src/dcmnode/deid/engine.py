"""The de-identifier: PS3.15 Table E.1-1 (Basic Profile + every option column) applied to a copy of a data set.

What it does beyond the table's rows, each decided here (PS3.15 E.1.1 leaves them to the de-identifier):

- Options: a row's action is the Basic Profile's unless an option in use has a column entry for it; where options
  disagree, an explicit K wins (the option says keep), else C (PS3.15 E.1.1: "A requirement for an Option ...
  overrides any requirement for the underlying Profile").
- Combined codes keep the IOD valid with the most protective choice (``_REQUIRED``): Z/D is D for a Type 1
  attribute, else Z; X/Z is Z for Type 1/2, else X; X/D is D for Type 1/2, else X; X/Z/D is D (Type 1), Z (Type 2),
  else X. X/Z/U* (Referenced/Source Image Sequence) is kept with its UIDs replaced: these sequences are Type 1 in
  Presentation States, enhanced derivations and RT objects, and a de-identified set keeps its references.
- Attributes the table does not list (PS3.15 E.1.1 Note 5: remove what is not known to be safe): kept when their VR
  cannot carry free text (numbers, binary, CS, AT) or their keyword is in ``SAFE_TEXT`` (equipment and code
  attributes); UIDs replaced (class UIDs in ``SAFE_UIDS`` kept); dates and times follow the date rows (removed under
  the Basic Profile, kept with Full Dates, shifted with Modified Dates: E.1.1 Note 4 suggests handling dates by their
  VR); sequences kept and their items processed by the same rules; anything else (PN, free text, ...) removed.
- Text Value (0040,A160) and Unformatted Text Value (0070,0006) are treated as rows of their own (D under the Basic
  Profile, C with Clean Structured Content / Clean Graphics) so that SR content and graphic annotations stay valid.
- Private attributes: removed, or kept (cleaned: UIDs replaced, text cleaned) with Retain Safe Private when Table
  E.3.10-1 lists their creator and element; their creator elements are kept with them.
- Curves (50xx) and overlays (60xx): Curve Data, Overlay Data and Overlay Comments per their rows; with Clean
  Graphics the groups are kept and their text cleaned. Text drawn into an overlay bitmap is not looked for.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pydicom.uid
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from dcmnode import __version__
from dcmnode.deid import dates, descriptors, pixels
from dcmnode.deid.keys import ProjectKey
from dcmnode.deid.options import BASIC_PROFILE_CODE, CODES, Option
from dcmnode.deid.pixels import MaskedRegion, PixelMask
from dcmnode.deid.table import Row, Table, load, safe_private
from dcmnode.errors import DeidentificationRefused

SAFE_VRS = frozenset(
    {"AT", "CS", "DS", "FD", "FL", "IS", "OB", "OD", "OF", "OL", "OV", "OW", "SL", "SS", "SV", "UL", "US", "UV"}
)
DATE_VRS = frozenset({"DA", "DT", "TM"})
TEXT_VRS = frozenset({"AE", "AS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
SAFE_TEXT = frozenset(
    {
        # Equipment (what the pixels mean; device masks match on them), pixel and acquisition technique
        "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ConvolutionKernel", "SequenceName",
        "ReceiveCoilName", "TransmitCoilName", "PulseSequenceName", "FilterType", "RescaleType",
        "WindowCenterWidthExplanation", "LUTExplanation", "ContentLabel", "LossyImageCompressionMethod",
        # Coded entries (PS3.3 8.8): code values and their standard meanings
        "CodeValue", "CodeMeaning", "CodingSchemeDesignator", "CodingSchemeVersion", "LongCodeValue",
        "URNCodeValue", "MappingResource", "ContextIdentifier", "TemplateIdentifier", "MappingResourceName",
        # The veterinary Patient Module (PS3.3 C.7.1.1): the species and breed, not the animal
        "PatientSpeciesDescription", "PatientBreedDescription",
    }
)  # fmt: skip
SAFE_UIDS = frozenset(
    {
        "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile", "ReferencedSOPClassUIDInFile", "CodingSchemeUID", "ContextUID",
        "MappingResourceUID", "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID",
        "ReferencedRelatedGeneralSOPClassUIDInFile", "RetrieveLocationUID", "SOPClassesInStudy",
    }
)  # fmt: skip
# Attributes the table does not list that carry content the options clean (see the module's docstring).
EXTRA_ROWS = {
    0x0040A160: Row("(0040,A160)", "Text Value", "D", {Option.CLEAN_STRUCTURED_CONTENT: "C"}),
    0x00700006: Row("(0070,0006)", "Unformatted Text Value", "D", {Option.CLEAN_GRAPHICS: "C"}),
}
# Type 1 / Type 2 of the combined-code attributes in the IODs that carry them (PS3.3); others are Type 3.
_TYPE1_SR = frozenset({"ContentDate", "ContentTime"})  # SR Document General Module
_TYPE1_ENHANCED = frozenset({"ContentDate", "ContentTime", "AcquisitionDateTime", "DeviceSerialNumber"})
_TYPE2 = frozenset(
    {
        "ContentDate", "ContentTime", "PatientID", "ContentCreatorName", "ContrastBolusAgent",
        "TreatmentMachineName", "RTPlanDate", "RTPlanTime", "TreatmentDate", "TreatmentTime",
        "PatientSexNeutered", "AcquisitionContextSequence",
    }
)  # fmt: skip
_TYPE2_SR = frozenset({"ReferencedPerformedProcedureStepSequence"})  # SR Document Series Module
_TYPE2_RT = frozenset({"OperatorsName", "ReviewerName"})  # RT Series Module; Approval Module (2C: approved)
# Type 2C for an animal (PS3.3 C.7.1.1): their X would leave the veterinary Patient Module invalid, Z empties them.
_TYPE2_VETERINARY = frozenset({"ResponsiblePerson", "ResponsibleOrganization"})
SR_CLASSES, RT_CLASSES = "1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.481."
DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, Any] = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D"}
_DUMMIES |= {"IS": "0", "DS": "0", "UR": "urn:dcmnode:anonymized", "AT": 0}
_DUMMIES |= {vr: 0 for vr in ("FD", "FL", "SL", "SS", "SV", "UL", "US", "UV")}
_DUMMIES |= {vr: b"\x00\x00" for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN")}
METHOD_MAX = 64  # LO


@dataclass(frozen=True)
class Profile:
    options: frozenset[Option] = frozenset()
    patient_id: str | None = None
    patient_name: str | None = None
    pixel_masks: tuple[PixelMask, ...] = ()


@dataclass
class Outcome:
    dataset: Dataset
    masked: list[MaskedRegion]


@dataclass(frozen=True)
class _Context:
    key: ProjectKey
    options: frozenset[Option]
    table: Table
    identifying: tuple[str, ...]
    days: int  # the Modified Dates offset (days back)
    sop_class: str
    enhanced: bool
    veterinary: bool
    cleaning: bool = False  # inside a sequence an option keeps (K) or cleans (C): its free text is cleaned


class Deidentifier:
    """One project's key and one profile; ``apply`` de-identifies one instance at a time (no state between them)."""

    def __init__(self, key: ProjectKey, profile: Profile) -> None:
        self.key = key
        self.profile = profile
        self.edition = load().edition

    def apply(self, ds: Dataset) -> Outcome:
        """A de-identified copy of ``ds`` with its own File Meta; ``ds`` is left as it was."""
        options = self.profile.options
        refuse = pixels.may_carry_burned_in_text(ds) and Option.CLEAN_PIXEL_DATA not in options
        if refuse:
            raise DeidentificationRefused(
                "the instance may carry burned-in text in its pixels (Burned In Annotation not NO); "
                "choose clean-pixel-data to mask it"
            )
        context = self._context(ds)
        out = _dataset(ds, context)
        self._identity(out, ds)
        self._markers(out)
        out.file_meta = _file_meta(ds, out)
        out.preamble = b"\x00" * 128
        masked: list[MaskedRegion] = []
        if Option.CLEAN_PIXEL_DATA in options and "PixelData" in out:
            masked = pixels.clean_pixel_data(out, self.profile.pixel_masks, list(context.identifying))
            out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        return Outcome(dataset=out, masked=masked)

    def _context(self, ds: Dataset) -> _Context:
        sop_class = str(ds.get("SOPClassUID", ""))
        name = pydicom.uid.UID(sop_class).name if sop_class else ""
        return _Context(
            key=self.key,
            options=self.profile.options,
            table=load(),
            identifying=tuple(descriptors.identifying_values(ds)),
            days=self.key.date_offset_days(str(ds.get("PatientID", ""))),
            sop_class=sop_class,
            enhanced="Enhanced" in name or "Legacy Converted" in name,
            veterinary="PatientSpeciesDescription" in ds or "PatientSpeciesCodeSequence" in ds,
        )

    def _identity(self, out: Dataset, original: Dataset) -> None:
        pseudonym = self.key.pseudonym(str(original.get("PatientID", "")))
        out.PatientID = self.profile.patient_id or pseudonym
        out.PatientName = self.profile.patient_name or pseudonym
        if Option.RETAIN_LONGITUDINAL_FULL_DATES in self.profile.options:
            out.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.profile.options:
            out.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            out.LongitudinalTemporalInformationModified = "REMOVED"

    def _markers(self, out: Dataset) -> None:
        """PS3.15 E.1.1 step 6; CID 7050 codes, 113100 first, then the options by code value."""
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = method_values(self.edition, self.profile.options)
        items = []
        for value, meaning in method_codes(self.profile.options):
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        out.DeidentificationMethodCodeSequence = items


def _ordered(options: Iterable[Option]) -> list[Option]:
    return sorted(options, key=lambda option: CODES[option][0])


def method_codes(options: frozenset[Option]) -> list[tuple[str, str]]:
    return [BASIC_PROFILE_CODE] + [CODES[option] for option in _ordered(options)]


def method_values(edition: str, options: frozenset[Option]) -> list[str]:
    """De-identification Method (0012,0063): LO values of at most 64 characters each."""
    values = [f"dcmnode {__version__} PS3.15 {edition} Basic Profile"]
    values += [f"+ {option.value}" for option in _ordered(options)]
    return [value[:METHOD_MAX] for value in values]


def _file_meta(original: Dataset, out: Dataset) -> FileMetaDataset:
    """A new File Meta (PS3.15 E.1.1 step 7): only what describes this file and dcmnode."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.SOPClassUID
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    source_meta = getattr(original, "file_meta", None)
    syntax = source_meta.get("TransferSyntaxUID") if source_meta is not None else None
    meta.TransferSyntaxUID = syntax or pydicom.uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"DCMNODE_{__version__}"[:16]
    return meta


def _dataset(src: Dataset, context: _Context) -> Dataset:
    out = Dataset()
    for elem in src:
        new = _element(elem, src, context)
        if new is not None:
            out.add(new)
    return out


def _element(elem: DataElement, src: Dataset, context: _Context) -> DataElement | None:
    tag = elem.tag
    if tag.element == 0 or tag.group == 0x0002:
        return None  # group lengths; File Meta elements do not belong in the data set
    if tag.is_private:
        return _private(elem, src, context)
    row = EXTRA_ROWS.get(tag) or context.table.rule(tag) or _overlay_group(tag, context)
    action = _action(row, tag, context) if row is not None else _unlisted(elem, context)
    return _perform(action, elem, context)


def _overlay_group(tag: BaseTag, context: _Context) -> Row | None:
    """The other elements of an overlay group follow Overlay Data (60xx,3000): an overlay goes, or stays cleaned
    with Clean Graphics, as a whole (an Overlay Plane without its data is not valid, PS3.3 C.9.2)."""
    return context.table.rule(tag & 0xFFFF0000 | 0x3000) if tag.group & 0xFF00 == 0x6000 else None


def _action(row: Row, tag: BaseTag, context: _Context) -> str:
    chosen = {action for option, action in row.options.items() if option in context.options}
    if context.cleaning and tag in EXTRA_ROWS:
        chosen.add("C")
    code = "K" if "K" in chosen else "C" if "C" in chosen else row.basic
    if code == "X" and context.veterinary and keyword_for_tag(tag) in _TYPE2_VETERINARY:
        return "Z"
    return _combined(code, tag, context) if "/" in code else code


def _combined(code: str, tag: BaseTag, context: _Context) -> str:
    if code == "X/Z/U*":
        return "U"
    required = _required_type(keyword_for_tag(tag), context)
    if code == "Z/D":
        return "D" if required == 1 else "Z"
    if code == "X/Z":
        return "Z" if required <= 2 else "X"
    if code == "X/D":
        return "D" if required <= 2 else "X"
    return {1: "D", 2: "Z"}.get(required, "X")  # X/Z/D


def _required_type(keyword: str, context: _Context) -> int:
    sr, rt = context.sop_class.startswith(SR_CLASSES), context.sop_class.startswith(RT_CLASSES)
    if (keyword in _TYPE1_ENHANCED and context.enhanced) or (keyword in _TYPE1_SR and sr):
        return 1
    if keyword in _TYPE2 or (keyword in _TYPE2_SR and sr) or (keyword in _TYPE2_RT and rt):
        return 2
    return 3


def _vr(elem: DataElement) -> str:
    """The VR to decide by: the first of an ambiguous one ("OB or OW", "US or SS") that pydicom resolves on write."""
    return str(elem.VR).split(" or ")[0]


def _unlisted(elem: DataElement, context: _Context) -> str:
    if _dictionary_vr(elem.tag) == "UN":
        return "X"  # a public tag no dictionary knows: nothing says it is safe, whatever VR the file claims (E.1.1)
    vr = _vr(elem)
    if vr == "UN":
        known = _dictionary_vr(elem.tag)
        return "K" if known in SAFE_VRS else "X"
    if vr in DATE_VRS:
        if Option.RETAIN_LONGITUDINAL_FULL_DATES in context.options:
            return "K"
        return "C" if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in context.options else "X"
    if vr == "UI":  # with Retain UIDs every UID stays, so that references to the kept ones still resolve
        keep = keyword_for_tag(elem.tag) in SAFE_UIDS or Option.RETAIN_UIDS in context.options
        return "K" if keep else "U"
    if vr == "SQ":
        return "R"  # its items processed by the same rules, inside a cleaned sequence still cleaned
    if vr in SAFE_VRS:
        return "K"
    if keyword_for_tag(elem.tag) in SAFE_TEXT:
        return "C"  # kept, with the patient's name parts, IDs and dates taken out (a "Dr DOE window" label)
    if context.cleaning:
        return "C"
    return "Z"  # emptied, not removed: as protective, and a Type 2 attribute stays present


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _private(elem: DataElement, src: Dataset, context: _Context) -> DataElement | None:
    """Private attributes go, unless Retain Safe Private and Table E.3.10-1 lists them (PS3.15 E.3.10)."""
    if Option.RETAIN_SAFE_PRIVATE not in context.options:
        return None
    group, number = elem.tag.group, elem.tag.element
    safe = safe_private()
    if 0x0010 <= number <= 0x00FF:  # a private creator
        creator = str(elem.value or "").strip()
        keep = any(entry[0] == creator and entry[1] == group for entry in safe.entries)
        return copy.deepcopy(elem) if keep else None
    creator_elem = src.get((group << 16) | (number >> 8))
    if creator_elem is None or not safe.is_safe(str(creator_elem.value or ""), group, number):
        return None
    return _perform("C", elem, context)


def _perform(action: str, elem: DataElement, context: _Context) -> DataElement | None:
    if action == "X":
        return None
    if elem.VR == "SQ":
        return _sequence(action, elem, context)
    if action == "Z":
        return DataElement(elem.tag, elem.VR, elem.empty_value)
    if action == "K":
        return DataElement(elem.tag, elem.VR, copy.deepcopy(elem.value))
    if action == "D":
        return DataElement(elem.tag, elem.VR, _dummy(elem, context))
    if action == "U" or elem.VR == "UI":
        return _uids(elem, context)
    return _clean(elem, context)


def _sequence(action: str, elem: DataElement, context: _Context) -> DataElement:
    """Z empties a sequence; every other action keeps its items, each processed by the same rules (PS3.15 E.1.1:
    K and C on a sequence apply the profile recursively; D keeps a Type 1 sequence non-empty). Under K and C the
    items' free text (Text Value, unlisted text) is cleaned rather than replaced or emptied."""
    if action == "Z":
        return DataElement(elem.tag, "SQ", DicomSequence())
    if action != "R":
        context = dataclasses.replace(context, cleaning=action in ("C", "K"))
    items = [_dataset(item, context) for item in elem.value or []]
    return DataElement(elem.tag, "SQ", DicomSequence(items))


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _one_or_many(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _uids(elem: DataElement, context: _Context) -> DataElement:
    mapped = [context.key.uid(str(value)) for value in _values(elem.value)]
    return DataElement(elem.tag, "UI", _one_or_many(mapped) if mapped else "")


def _dummy(elem: DataElement, context: _Context) -> Any:
    if _vr(elem) == "UI":
        original = _values(elem.value)
        return context.key.uid(str(original[0])) if original else context.key.uid(f"dummy {elem.tag}")
    if _vr(elem) in _DUMMIES:
        return _DUMMIES[_vr(elem)]
    return DUMMY_TEXT  # PN, LO, SH, LT, ST, UT, UC, CS, AE (all take 10 characters)


def _clean(elem: DataElement, context: _Context) -> DataElement:
    """C: same meaning, no identifying content (PS3.15 E.1.1): dates shifted (Modified Dates), times kept, names
    replaced, text with the patient's identifying values removed, everything else kept."""
    vr, values = _vr(elem), _values(elem.value)
    if vr == "DA":
        values = [dates.shift_da(str(v), -context.days) for v in values]
    elif vr == "DT":
        values = [dates.shift_dt(str(v), -context.days) for v in values]
    elif vr == "PN":
        values = [DUMMY_TEXT] if values else []
    elif vr in TEXT_VRS:
        values = [descriptors.clean(str(v), context.identifying) for v in values]
        values = values if any(values) else ([DUMMY_TEXT] if values else [])  # a Type 1 label stays non-empty
    else:
        return DataElement(elem.tag, elem.VR, copy.deepcopy(elem.value))
    return DataElement(elem.tag, elem.VR, _one_or_many(values) if values else elem.empty_value)
