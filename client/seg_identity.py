"""How a DICOM SEG made by liverseg names itself, so that the PACS bridge can recognise one it
(or the service) already made. The SEG writer (`service.io.seg`) writes these; imports nothing."""

MANUFACTURER = "liverseg"
SERIES_DESCRIPTION = "Liver segmentation (liverseg)"
