"""Pretrained weights: a table per family, resolved through the standard caches, hash-checked.

The way timm and torchvision do it. Each entry names one published file:
the variant it fits, its URL, its checksum, its licence and where it comes
from. ``create_model(name, pretrained=...)`` accepts

- ``True``: the variant's default weights (the first entry listed for it; for
  a timm model, or a registered model built on a timm backbone, timm's
  default Hugging Face hub weights of that backbone);
- a weights name from ``list_weights()``, e.g. ``"mscan_t.in1k"`` (an
  encoder file given to a segmentor fills its backbone);
- the path of a local file of any supported layout (ours, official SegNeXt /
  mmsegmentation, timm, torchvision ResNet).

Where files live, and how they are found:

- Files with a plain URL go to the ``torch.hub`` cache,
  ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch`` by default), as
  ``torch.hub.load_state_dict_from_url`` and mmengine put them.
- timm weights live on the Hugging Face hub and go to its cache,
  ``$HF_HUB_CACHE`` or ``$HF_HOME/hub`` (``~/.cache/huggingface/hub``), in
  the hub's own ``models--<org>--<repo>/snapshots/<commit>/<file>`` layout.
- With ``HF_HUB_OFFLINE=1`` nothing is downloaded, from either place; a file
  not in the cache is a ``WeightsError`` naming the file to place and the
  folder to place it in. The variables are read at every call.

Checksums: the SegNeXt / MSCAN files are published by mmsegmentation with the
first 8 hex digits of their SHA-256 in the file name (``...-119e8c9f.pth``),
which is all that was published; that prefix is checked, as
``torch.hub.download_url_to_file(hash_prefix=...)`` does. Hub files are
stored under their full SHA-256 (the git-LFS object id) and checked against
it. A file whose hash differs is renamed ``<file>.sha256-mismatch`` (kept for
inspection, never loaded) and the error says so.

SegNeXt: Guo et al., "SegNeXt: Rethinking Convolutional Attention Design for
Semantic Segmentation", NeurIPS 2022, arXiv:2209.08575. Its Sec. 4.1 trains
every segmentor from ImageNet-pretrained MSCAN encoders; the MSCAN ImageNet
weights and the ADE20K segmentors were released by the authors on Tsinghua
Cloud (Apache-2.0 repository) and re-published by mmsegmentation with
renamed keys (``mlp.dwconv.dwconv`` -> ``mlp.dwconv``), which are the files
listed here. CEDNet, MSCSA and FINE published no weights.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from msfusion.checkpoint import CLASSIFIER_PREFIXES, CheckpointError, load_checkpoint

__all__ = [
    "Weights",
    "WeightsError",
    "register_weights",
    "list_weights",
    "get_weights",
    "default_weights",
    "timm_weights",
    "resolve_weights",
    "load_pretrained",
    "weights_file",
    "hub_offline",
    "torch_hub_dir",
    "hf_hub_cache",
    "sha256_file",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsError(ValueError):
    """Weights that cannot be found, fetched or trusted; the message says what to do."""


@dataclass(frozen=True)
class Weights:
    """One published weights file.

    Attributes:
        name: ``<model>.<tag>``, e.g. ``"mscan_t.in1k"``.
        model: the registered (or timm) model the file fits.
        url: where it is downloaded from.
        sha256: the full SHA-256 when published, else None.
        sha256_prefix: the leading hex digits of the SHA-256 that the
            publisher put in the file name, when only those are published.
        licence: the licence the publisher states.
        source: who published it and where that is stated.
        dataset: what it was trained on.
        num_classes: classes of its classifier or segmentation head.
        hf_hub_id: Hugging Face hub repository (timm weights), or None.
        hf_filename: the file inside that repository.
    """

    name: str
    model: str
    url: str
    licence: str
    source: str
    dataset: str
    num_classes: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    hf_hub_id: str | None = None
    hf_filename: str = "model.safetensors"

    @property
    def filename(self) -> str:
        return self.hf_filename if self.hf_hub_id else self.url.rsplit("/", 1)[-1]

    def describe(self) -> dict[str, Any]:
        """The entry as a plain dict (for ``msfusion models --weights`` and JSON)."""
        checksum = self.sha256 or (
            f"sha256 prefix {self.sha256_prefix} (in the file name)"
            if self.sha256_prefix
            else "git-LFS sha256 on the hub"
        )
        return dict(
            name=self.name,
            model=self.model,
            url=self.url,
            sha256=checksum,
            licence=self.licence,
            source=self.source,
            dataset=self.dataset,
            num_classes=self.num_classes,
        )


_TABLE: dict[str, Weights] = {}


def register_weights(entry: Weights) -> Weights:
    """Add ``entry`` to the table (a name may be registered once)."""
    if entry.name in _TABLE and _TABLE[entry.name] != entry:
        raise ValueError(f"weights {entry.name!r} are registered twice")
    if entry.sha256 is not None and not _SHA256.match(entry.sha256):
        raise ValueError(f"weights {entry.name!r}: sha256 must be 64 lower-case hex digits, got {entry.sha256!r}")
    _TABLE[entry.name] = entry
    return entry


def list_weights(pattern: str = "*") -> list[str]:
    """Names of the weights in the table matching an fnmatch ``pattern``, sorted."""
    return sorted(n for n in _TABLE if fnmatch.fnmatch(n, pattern))


def get_weights(name: str) -> Weights:
    """The entry called ``name``; ``WeightsError`` listing the available names otherwise."""
    if name in _TABLE:
        return _TABLE[name]
    model = name.split(".", 1)[0]
    own = list_weights(f"{model}.*")
    listing = ", ".join(own or list_weights())
    raise WeightsError(
        f"no weights called {name!r}. Available{' for ' + repr(model) if own else ''}: {listing}. "
        "A timm backbone takes pretrained=True (timm's default hub weights); a local file is given by its path."
    )


def default_weights(model_name: str) -> Weights | None:
    """The first table entry registered for ``model_name``, if any."""
    return next((w for w in _TABLE.values() if w.model == model_name), None)


def timm_weights(timm_name: str) -> Weights:
    """timm's default pretrained weights of ``timm_name`` (on the Hugging Face hub), as an entry."""
    import timm
    from timm.models import get_pretrained_cfg

    arch, _, tag = timm_name.partition(".")
    if not timm.is_model(arch):
        raise WeightsError(f"{timm_name!r} is not a timm model; timm.list_models(pretrained=True) lists them")
    cfg = get_pretrained_cfg(timm_name if tag else arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise WeightsError(
            f"timm publishes no hub weights for {timm_name!r}; timm.list_models({arch!r}, pretrained=True) lists the "
            "models that have some. Load a local file with pretrained=PATH instead."
        )
    filename = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
    return Weights(
        name=hub_id.split("/", 1)[-1],
        model=arch,
        url=f"https://huggingface.co/{hub_id}/resolve/main/{filename}",
        licence=str(getattr(cfg, "license", None) or "not stated in timm's pretrained config"),
        source=f"timm pretrained config of {arch!r} (Hugging Face hub {hub_id})",
        dataset=getattr(cfg, "tag", None) or "",
        num_classes=getattr(cfg, "num_classes", None),
        hf_hub_id=hub_id,
        hf_filename=filename,
    )


# ---------------------------------------------------------------- caches


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value (1, true, yes, on): nothing is downloaded."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def torch_hub_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``, read now), where URL weights are cached."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_hash(entry: Weights, path: Path) -> tuple[str | None, str]:
    """The hash (or prefix) ``path`` must have, and where that expectation comes from."""
    if entry.sha256:
        return entry.sha256, "the weights table"
    if entry.sha256_prefix:
        return entry.sha256_prefix, "the prefix its publisher put in the file name"
    if entry.hf_hub_id:
        blob = path.resolve().name
        if _SHA256.match(blob):
            return blob, "the hub's git-LFS object id"
    return None, ""


def _verify(entry: Weights, path: Path) -> None:
    """Check ``path`` against the entry's hash; move a mismatching file aside and raise."""
    expected, origin = _expected_hash(entry, path)
    if expected is None:
        warnings.warn(f"{path}: no published checksum for {entry.name!r}; the file is used unchecked", stacklevel=3)
        return
    actual = sha256_file(path)
    if actual.startswith(expected):
        return
    real = path.resolve()
    aside = real.with_name(real.name + ".sha256-mismatch")
    os.replace(real, aside)
    if path.is_symlink():
        path.unlink()
    raise WeightsError(
        f"{path} is not the published {entry.name!r}: its SHA-256 is {actual}, expected "
        f"{'a hash starting with ' if len(expected) < 64 else ''}{expected} ({origin}). The file was moved to "
        f"{aside} and not used. Delete it and download {entry.url} again (or place the right file at {path})."
    )


def _hf_snapshot_file(entry: Weights, cache: Path) -> Path | None:
    """The cached hub file of ``entry`` (revision ``main``), without any network call."""
    repo = cache / ("models--" + entry.hf_hub_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    candidate = repo / "snapshots" / ref.read_text().strip() / entry.hf_filename
    return candidate if candidate.exists() else None


def weights_file(entry: Weights) -> Path:
    """Where ``entry`` lives (or would live) in its cache."""
    if entry.hf_hub_id:
        cache = hf_hub_cache()
        found = _hf_snapshot_file(entry, cache)
        if found is not None:
            return found
        return cache / ("models--" + entry.hf_hub_id.replace("/", "--")) / "snapshots" / "<commit>" / entry.hf_filename
    return torch_hub_dir() / entry.filename


def _missing(entry: Weights, why: str) -> WeightsError:
    if entry.hf_hub_id:
        cache = hf_hub_cache()
        where = (
            f"the Hugging Face hub cache {cache}: run `huggingface-cli download {entry.hf_hub_id} "
            f"{entry.hf_filename} --cache-dir {cache}` on a machine with internet and copy that folder here"
        )
    else:
        where = f"{torch_hub_dir() / entry.filename} (download it from {entry.url})"
    return WeightsError(f"weights {entry.name!r} are not available: {why}. Place the file at {where}.")


def resolve_weights(entry: Weights) -> Path:
    """The checked local file of ``entry``: from the cache, else downloaded (unless offline)."""
    offline = hub_offline()
    if entry.hf_hub_id:
        cache = hf_hub_cache()
        path = _hf_snapshot_file(entry, cache)
        if path is None:
            if offline:
                raise _missing(entry, "HF_HUB_OFFLINE is set and the file is not in the cache")
            from huggingface_hub import hf_hub_download

            try:
                path = Path(hf_hub_download(entry.hf_hub_id, entry.hf_filename, cache_dir=str(cache)))
            except Exception as err:  # network, authentication, missing file: all end the same way
                raise _missing(entry, f"the download failed ({type(err).__name__}: {err})") from err
    else:
        path = torch_hub_dir() / entry.filename
        if not path.exists():
            if offline:
                raise _missing(entry, "HF_HUB_OFFLINE is set and the file is not in the cache")
            import torch.hub

            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=None, progress=True)
            except Exception as err:  # network errors come in many types
                path.unlink(missing_ok=True)
                raise _missing(entry, f"the download failed ({type(err).__name__}: {err})") from err
    _verify(entry, path)
    return path


# ---------------------------------------------------------------- loading


def _timm_backbone(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The timm feature wrapper inside ``model`` (itself or its backbone) and its timm name."""
    for part in (model, getattr(model, "backbone", None)):
        name = getattr(part, "name", None)
        if type(part).__name__ == "TimmFeatures" and isinstance(name, str):
            return part, name
    return None


def _pick(model_name: str, model: nn.Module, spec: str | bool) -> Weights:
    if spec is True:
        entry = default_weights(model_name)
        if entry is not None:
            return entry
        timm_part = _timm_backbone(model)
        if timm_part is not None:
            return timm_weights(timm_part[1])
        raise WeightsError(
            f"no published weights for {model_name!r}. Models with weights: "
            f"{', '.join(sorted({w.model for w in _TABLE.values()}))}, and every timm backbone with hub weights "
            "(pretrained=True). The CEDNet, MSCSA and FINE authors published none; load a file of your own with "
            "pretrained=PATH."
        )
    if spec in _TABLE:
        return _TABLE[spec]
    timm_part = _timm_backbone(model)
    if timm_part is not None and "." in spec:
        import timm

        if timm.is_model(spec.split(".", 1)[0]):
            return timm_weights(spec)
    return get_weights(spec)


def _looks_like_path(spec: str) -> bool:
    return (
        Path(spec).exists()
        or os.sep in spec
        or "/" in spec
        or Path(spec).suffix in (".pth", ".pt", ".bin", ".safetensors")
    )


def resolve_pretrained(model_name: str, model: nn.Module, spec: str | Path | bool) -> tuple[Path, Weights | None]:
    """The local file ``spec`` designates for ``model`` (a path, a weights name, or True) and its entry."""
    if isinstance(spec, Path) or (isinstance(spec, str) and _looks_like_path(spec)):
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"pretrained file not found: {path}")
        return path, None
    if not (spec is True or isinstance(spec, str)):
        raise WeightsError(f"pretrained must be True, a weights name or a file path, got {spec!r}")
    entry = _pick(model_name, model, spec)
    return resolve_weights(entry), entry


def load_pretrained(model: nn.Module, spec: str | Path | bool, model_name: str | None = None) -> dict[str, list[str]]:
    """Initialise ``model`` from ``spec`` (True, a weights name, or a path); returns what ``load_checkpoint`` did.

    Every tensor the file has for the model must load. Tensors the file
    cannot have are allowed to stay as initialised, and reported: the
    classifier of another class count (fine-tuning, as timm and
    mmsegmentation do), the decoder when the file is an encoder, and layers
    msfusion adds to a backbone (ViTDet's simple pyramid). Anything else
    missing, unexpected or of another shape is a ``CheckpointError``.
    """
    model_name = model_name or (getattr(model, "model_cfg", None) or {}).get("name") or type(model).__name__
    path, entry = resolve_pretrained(model_name, model, spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = load_checkpoint(model, path, strict=False)
    unexplained = [k for k in result["missing"] if not _may_stay_initialised(k)]
    # A classifier file given to a features-only model: its head has no place there.
    own_top = {k.split(".", 1)[0] for k in model.state_dict()}
    headless = [
        k for k in result["unexpected"] if k.startswith(CLASSIFIER_PREFIXES) and k.split(".", 1)[0] not in own_top
    ]
    unexpected = [k for k in result["unexpected"] if k not in headless]
    if headless:
        warnings.warn(f"{path}: the model has no classifier; not used: {', '.join(headless)}", stacklevel=2)
    if unexplained or unexpected:
        raise CheckpointError(
            f"{path} ({entry.name if entry else 'local file'}) does not fit {model_name!r}: "
            f"{len(unexplained)} missing tensors ({', '.join(unexplained[:6])}{'...' if len(unexplained) > 6 else ''}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:6])}). "
            "Is it a file of this variant?"
        )
    for w in caught:
        text = str(w.message)
        if "dropped" in text or "not used" in text or (result["missing"] and "strict=False" in text):
            warnings.warn(w.message, stacklevel=2)
    return result


def _may_stay_initialised(key: str) -> bool:
    return (
        key.startswith(CLASSIFIER_PREFIXES)
        or "simple_pyramid." in key
        or key.startswith(("decode_head.", "auxiliary_head.", "neck.", "addon."))
    )


# ---------------------------------------------------------------- the table

_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5"
_SEGNEXT_LICENCE = (
    "Apache-2.0 (SegNeXt repository and mmsegmentation; the SegNeXt authors ask commercial users to contact them)"
)

# MSCAN ImageNet-1K encoders: the files mmsegmentation's SegNeXt configs start from
# (``checkpoint_file`` in configs/segnext/segnext_mscan-{t,s,b,l}_1xb16-adamw-160k_ade20k-512x512.py).
for _size, _stamp in (("t", "119e8c9f"), ("s", "f33ccdf2"), ("b", "3ab7d230"), ("l", "cef260d4")):
    register_weights(
        Weights(
            name=f"mscan_{_size}.in1k",
            model=f"mscan_{_size}",
            url=f"{_MMSEG}/pretrain/segnext/mscan_{_size}_20230227-{_stamp}.pth",
            sha256_prefix=_stamp,
            licence=_SEGNEXT_LICENCE,
            source="SegNeXt authors (Tsinghua Cloud), keys converted and re-published by mmsegmentation "
            "(configs/segnext, PR #2653)",
            dataset="ImageNet-1K",
            num_classes=1000,
        )
    )

# SegNeXt ADE20K segmentors, 160k iterations, 512x512 (mmsegmentation configs/segnext/README.md:
# mIoU 41.50 / 44.16 / 48.03 / 50.99 single-scale for T / S / B / L).
for _size, _run in (
    ("t", "20230210_140244-05bd8466"),
    ("s", "20230214_113014-43013668"),
    ("b", "20230209_172053-b6f6c70c"),
    ("l", "20230209_172055-19b14b63"),
):
    _cfg = f"segnext_mscan-{_size}_1x16_512x512_adamw_160k_ade20k"
    register_weights(
        Weights(
            name=f"segnext_{_size}.ade20k",
            model=f"segnext_{_size}",
            url=f"{_MMSEG}/segnext/{_cfg}/{_cfg}_{_run}.pth",
            sha256_prefix=_run.rsplit("-", 1)[1],
            licence=_SEGNEXT_LICENCE,
            source="mmsegmentation SegNeXt model zoo (configs/segnext/README.md, metafile.yaml)",
            dataset="ADE20K (150 classes), from ImageNet-1K MSCAN",
            num_classes=150,
        )
    )
