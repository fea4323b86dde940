"""dcmnode: a DICOM network node (DIMSE + DICOMweb) with an indexed store."""

__version__ = "0.1.0"
