// A pane's four corners of overlay text: patient (top left), study (top right), series and slice (bottom left),
// and window / zoom / enhancement (bottom right).

import { TAG, formatDate, formatName, formatTime, number, text, value } from "./dicom.js";

export function writeCorners(pane) {
  const c = pane.corners;
  if (!pane.item) {
    for (const el of Object.values(c)) el.textContent = "";
    return;
  }
  c.tl.textContent = patientText(pane.studyDs);
  c.tr.textContent = studyText(pane.studyDs);
  c.bl.textContent = sliceText(pane);
  c.br.textContent = displayText(pane);
}

function patientText(studyDs) {
  const sex = text(studyDs, TAG.PatientSex);
  const birth = formatDate(text(studyDs, TAG.PatientBirthDate));
  return [
    formatName(value(studyDs, TAG.PatientName)),
    text(studyDs, TAG.PatientID),
    [birth, sex].filter(Boolean).join("  "),
  ].join("\n");
}

function studyText(studyDs) {
  return [
    text(studyDs, TAG.StudyDescription),
    `${formatDate(text(studyDs, TAG.StudyDate))} ${formatTime(text(studyDs, TAG.StudyTime))}`.trim(),
    text(studyDs, TAG.AccessionNumber) && `Acc ${text(studyDs, TAG.AccessionNumber)}`,
  ].join("\n");
}

function sliceText(pane) {
  const item = pane.item;
  const location = number(pane.meta, TAG.SliceLocation);
  const thickness = number(pane.meta, TAG.SliceThickness);
  const seriesNo = text(pane.seriesDs, TAG.SeriesNumber);
  return [
    `Se ${seriesNo}${seriesNo ? ": " : ""}${text(pane.seriesDs, TAG.SeriesDescription)}  ${pane.modality}`,
    `Im ${item.number ?? "?"}  (${pane.index + 1}/${pane.items.length})`,
    item.frame ? `Frame ${item.frame}/${item.frames}` : "",
    location !== undefined ? `Loc ${location.toFixed(1)} mm${thickness ? `  Thk ${thickness} mm` : ""}` : "",
    item.cols ? `${item.cols}×${item.rows}` : "",
  ]
    .filter(Boolean)
    .join("\n");
}

function displayText(pane) {
  const w = pane.effectiveWindow();
  const windowText = pane.window
    ? `W ${pane.window.width}  L ${pane.window.center}`
    : `W ${fmt(w.width)}  L ${fmt(w.center)} (${pane.storedWindow ? "stored" : "default"})`;
  return [
    windowText,
    `Zoom ${Math.round(pane.zoom * 100)} %`,
    pane.invert ? "Inverted" : "",
    pane.enhance ? `Enhance ${pane.enhance}` : "",
    pane.comparing() ? (pane.compare === "split" ? "before | after" : "before  ·  after") : "",
  ]
    .filter(Boolean)
    .join("\n");
}

function fmt(x) {
  return Number.isInteger(x) ? String(x) : x.toFixed(1);
}
