// DICOM JSON (PS3.18 F.2) helpers: tag numbers by keyword for what the viewer reads, and value formatting.

export const TAG = {
  SOPClassUID: "00080016",
  SOPInstanceUID: "00080018",
  StudyDate: "00080020",
  StudyTime: "00080030",
  AccessionNumber: "00080050",
  Modality: "00080060",
  ModalitiesInStudy: "00080061",
  StudyDescription: "00081030",
  SeriesDescription: "0008103E",
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  SliceThickness: "00180050",
  StudyInstanceUID: "0020000D",
  SeriesInstanceUID: "0020000E",
  SeriesNumber: "00200011",
  InstanceNumber: "00200013",
  ImagePositionPatient: "00200032",
  SliceLocation: "00201041",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  NumberOfSeriesRelatedInstances: "00201209",
  NumberOfFrames: "00280008",
  Rows: "00280010",
  Columns: "00280011",
  PixelSpacing: "00280030",
  BitsStored: "00280101",
  PixelRepresentation: "00280103",
  WindowCenter: "00281050",
  WindowWidth: "00281051",
  RescaleIntercept: "00281052",
  RescaleSlope: "00281053",
};

/** The n-th value of an attribute (undefined when absent). */
export function value(ds, tag, n = 0) {
  return ds?.[tag]?.Value?.[n];
}

export function values(ds, tag) {
  return ds?.[tag]?.Value ?? [];
}

export function number(ds, tag, n = 0) {
  const v = value(ds, tag, n);
  const x = typeof v === "number" ? v : Number.parseFloat(v);
  return Number.isFinite(x) ? x : undefined;
}

/** A person name value as text: the alphabetic group. */
export function personName(v) {
  if (v === undefined || v === null) return "";
  if (typeof v === "string") return v;
  return v.Alphabetic ?? v.Ideographic ?? v.Phonetic ?? "";
}

/** "Doe^John^^Dr" → "Doe, John Dr" */
export function formatName(v) {
  const pn = personName(v);
  if (!pn) return "";
  const [family = "", given = "", middle = "", prefix = "", suffix = ""] = pn.split("^");
  const rest = [prefix, given, middle, suffix].filter(Boolean).join(" ");
  return rest ? `${family}, ${rest}` : family;
}

/** "20240305" → "2024-03-05" */
export function formatDate(da) {
  if (!da || da.length !== 8) return da ?? "";
  return `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}`;
}

/** "101500.123" → "10:15:00" */
export function formatTime(tm) {
  if (!tm || tm.length < 4) return tm ?? "";
  return `${tm.slice(0, 2)}:${tm.slice(2, 4)}${tm.length >= 6 ? `:${tm.slice(4, 6)}` : ""}`;
}

/** One attribute's values as display text ("\"-separated, as DICOM writes multiple values). */
export function text(ds, tag) {
  const element = ds?.[tag];
  if (!element) return "";
  return (element.Value ?? []).map((v) => (element.vr === "PN" ? personName(v) : String(v))).join("\\");
}

/** Modalities that carry no pixel data worth rendering. */
export const NON_IMAGE_MODALITIES = new Set(["SR", "KO", "PR", "DOC", "RTSTRUCT", "RTPLAN", "REG", "FID", "SEG"]);
