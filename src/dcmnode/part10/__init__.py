"""Part 10 files as bytes (PS3.10, PS3.5): the element walk, the scan ingest uses, the DICOM JSON writer, the
plain-image summary and frame access. Pure bytes: no store, no network, no other dcmnode part but errors."""
