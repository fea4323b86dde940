"""De-identification (PS3.15 Annex E): the Basic Application Level Confidentiality Profile with every option.

Data sets in, data sets out; no network, no store. Its parts:

- ``options``: the option names of the API and CLI and their CID 7050 codes;
- ``table``: Table E.1-1 as data (``e1_1.json``, generated from the standard's table with its edition and provenance);
- ``keys``: a project's key and what is derived from it (UIDs, date offsets, pseudonyms), HMAC-SHA256;
- ``engine``: ``Deidentifier``, the table applied at every depth, the File Meta, private groups, the markers;
- ``descriptors``: Clean Descriptors (identity removed from free text, not the text emptied);
- ``pixels``: burned-in text (which instances may carry it, OCR, masks on every frame).

The service around it (project keys under the data folder, jobs, outputs) is ``core/deidentify.py``.
"""
