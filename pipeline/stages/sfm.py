"""The ``sfm`` stage: register a folder of photos with pycolmap when it has no COLMAP model.

Runs COLMAP's own pipeline through pycolmap on the CPU (SIFT extraction, exhaustive matching,
incremental mapping), keeps the largest reconstruction, and writes a scene folder that
``prepare`` reads like any other: ``<out>/images`` (a link to the photos) and ``<out>/sparse``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.formats.paths import check_outputs_distinct

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
#: SIFT runs on images downscaled to this longest side (COLMAP's default).
DEFAULT_MAX_IMAGE_SIZE = 1600


def run_sfm(scene_dir: str | os.PathLike, out_dir: str | os.PathLike, *, single_camera: bool = True,
            max_image_size: int = DEFAULT_MAX_IMAGE_SIZE, num_threads: int = -1) -> Path:
    """Register ``scene_dir/images`` and write ``out_dir/{images,sparse}``.

    Args:
        scene_dir: folder holding ``images/``.
        out_dir: output scene folder (replaced atomically).
        single_camera: all photos share one camera (true for most photo sets from one device).
        max_image_size: SIFT runs on images downscaled to this longest side.
        num_threads: threads for extraction and matching (-1: all cores).

    Raises:
        ValueError: no images, or no reconstruction could be made (names the folder).
    """
    import pycolmap

    scene_dir = Path(scene_dir).resolve()
    image_dir = scene_dir / "images"
    names = sorted(p.name for p in image_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if image_dir.is_dir() else []
    if len(names) < 2:
        raise ValueError(f"{image_dir}: need at least 2 photos to register, found {len(names)}")
    out_dir = Path(out_dir)
    # The output folder is replaced whole: it must not be (or hold) the photos it is made from.
    check_outputs_distinct({"photo folder": scene_dir, "images": image_dir}, {"scene folder": out_dir})
    if image_dir.resolve().is_relative_to(out_dir.resolve()):
        raise ValueError(f"output folder {str(out_dir)!r} holds the photos {str(image_dir)!r}; replacing it would delete them")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        database = work / "database.db"
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = num_threads
        extraction.max_image_size = max_image_size
        log.info("extracting SIFT features from %d photos in %s", len(names), image_dir)
        pycolmap.extract_features(
            database, image_dir, image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.AUTO,
            extraction_options=extraction, device=pycolmap.Device.cpu,
        )
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = num_threads
        log.info("matching all pairs")
        pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
        log.info("incremental mapping")
        models = pycolmap.incremental_mapping(database, image_dir, work / "maps")
        if not models:
            raise ValueError(f"{image_dir}: COLMAP could not register these photos (no reconstruction)")
        best = max(models.values(), key=lambda rec: rec.num_reg_images())
        log.info("kept the largest reconstruction: %d of %d photos, %d points",
                 best.num_reg_images(), len(names), best.num_points3D())
        (work / "sparse").mkdir()
        best.write(work / "sparse")
        (work / "images").symlink_to(image_dir, target_is_directory=True)
        database.unlink()
        shutil.rmtree(work / "maps", ignore_errors=True)
        os.chmod(work, 0o755)  # mkdtemp makes it private; results are meant to be shared
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir
