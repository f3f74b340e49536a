"""The CT of a finished job as NIfTI, for the viewer page, which overlays the mask on it: so it
is on the mask's grid, the decoded input's. Made from the stored input the first time it is asked
for (clients of the API alone never pay for it), then kept beside the job's results."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from service.io.decode import Upload, decode_upload
from service.io.encode import image_to_nifti_bytes
from service.jobs.store import JobStore, not_found
from service.segmentation import JOB_FILES
from service.settings import Settings


def job_ct_nifti(store: JobStore, job_id: str, settings: Settings) -> Path:
    """The path of the job's CT as .nii.gz (HU, the input's pixel type and exact geometry).

    Raises:
        NotFound: the job was deleted meanwhile.
        the errors of `decode_upload`, which the job's own decode already passed.
    """
    path = store.folder(job_id) / JOB_FILES["ct"]
    if path.exists():
        return path
    try:
        volume = decode_upload([Upload(name, file) for name, file in store.inputs(job_id)], settings)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".ct-", suffix=".tmp", delete=False) as out:
            out.write(image_to_nifti_bytes(volume.image))
    except FileNotFoundError as gone:  # deleted while we read it
        raise not_found(job_id) from gone
    os.replace(out.name, path)  # whole or absent: two viewers asking at once each write a complete file
    return path
