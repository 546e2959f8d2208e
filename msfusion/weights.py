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

Checksums, and exactly what is checked:

- SegNeXt / MSCAN files: mmsegmentation published only the first 8 hex
  digits of their SHA-256, in the file name (``...-119e8c9f.pth``); that
  prefix is checked, by ``torch.hub.download_url_to_file(hash_prefix=...)``
  while downloading and again for a file found in the cache.
- Hugging Face hub files (timm weights): a cache entry that links to a blob
  named by its SHA-256 (the git-LFS object id, the hub cache's normal layout)
  is checked against that name. A cache entry stored as a plain file
  (Windows without symlinks, a cache copied with ``cp -L``) carries no hash:
  it is checked against the SHA-256 the hub publishes for it (one metadata
  request); with ``HF_HUB_OFFLINE=1``, or when that request fails, it is
  loaded unchecked, with a warning that says so and why.
- A local file given by its path (``pretrained=PATH``) is the user's: it is
  read safely (safetensors, or ``torch.load(weights_only=True)``), not hashed.

A file whose hash differs is renamed ``<file>.sha256-mismatch`` (kept for
inspection, never loaded) and the error says so.

Loading: :func:`load_pretrained` is the one loader, for
``create_model(pretrained=...)`` and a recipe's ``model.pretrained`` alike;
its :class:`LoadReport` lists every skipped tensor with its shape in the file
and in the model and the reason.

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

from msfusion.checkpoint import CLASSIFIER_PREFIXES, CheckpointError

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
    "LoadReport",
    "SkippedTensor",
    "MIN_PRETRAINED_SHARE",
    "weights_file",
    "hub_offline",
    "hub_download_command",
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


def _hub_published_sha256(entry: Weights, path: Path) -> tuple[str | None, str]:
    """The SHA-256 the Hugging Face hub publishes for a cached file, asked over the network.

    Returns the hash, or None and why it could not be had (offline, no
    ``huggingface_hub``, a network error, a file not stored with git-LFS).
    """
    if hub_offline():
        return None, "HF_HUB_OFFLINE is set, so the hub cannot be asked for the file's SHA-256"
    commit = path.parent.name if re.match(r"^[0-9a-f]{40}$", path.parent.name) else None
    try:
        from huggingface_hub import HfApi

        info = HfApi().get_paths_info(entry.hf_hub_id, [entry.hf_filename], revision=commit)
    except Exception as err:  # ImportError, network and HTTP errors: the check is skipped, and said so
        return None, f"asking the hub for the file's SHA-256 failed ({type(err).__name__}: {err})"
    lfs = getattr(info[0], "lfs", None) if info else None
    sha = getattr(lfs, "sha256", None) if lfs is not None else None
    if not sha:
        return None, f"the hub publishes no git-LFS SHA-256 for {entry.hf_filename} in {entry.hf_hub_id}"
    return str(sha), f"the git-LFS SHA-256 the hub publishes for revision {commit or 'main'}"


def _expected_hash(entry: Weights, path: Path) -> tuple[str | None, str]:
    """The hash (or prefix) ``path`` must have and where that comes from; or None and why there is none."""
    if entry.sha256:
        return entry.sha256, "the weights table"
    if entry.sha256_prefix:
        return entry.sha256_prefix, "the prefix its publisher put in the file name"
    if entry.hf_hub_id:
        blob = path.resolve().name
        if _SHA256.match(blob):
            return blob, "the hub's git-LFS object id (the name of the cache's blob)"
        # A cache entry stored as a plain file (Windows without symlinks, a cache copied with cp -L):
        # its name says nothing, so the hash is asked of the hub.
        sha, origin = _hub_published_sha256(entry, path)
        if sha is not None:
            return sha, origin
        return None, f"it is a plain file in the hub cache, not a link to a blob named by its SHA-256, and {origin}"
    return None, "no checksum is published for it"


def _verify(entry: Weights, path: Path) -> None:
    """Check ``path`` against the entry's hash; move a mismatching file aside and raise; warn when unchecked."""
    expected, origin = _expected_hash(entry, path)
    if expected is None:
        warnings.warn(f"{path} ({entry.name}) is used without a SHA-256 check: {origin}", stacklevel=3)
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


def hub_download_command() -> str:
    """The download command of the installed ``huggingface_hub``: ``hf download`` (0.34 and later), else the older
    ``huggingface-cli download``."""
    import importlib.util

    if importlib.util.find_spec("huggingface_hub") is None:  # missing: name the current command
        return "pip install huggingface_hub && hf download"
    try:
        has_hf = importlib.util.find_spec("huggingface_hub.cli.hf") is not None
    except ModuleNotFoundError:  # before 0.34 there is no huggingface_hub.cli package at all
        has_hf = False
    return "hf download" if has_hf else "huggingface-cli download"


def _missing(entry: Weights, why: str) -> WeightsError:
    if entry.hf_hub_id:
        cache = hf_hub_cache()
        where = (
            f"the Hugging Face hub cache {cache}: run `{hub_download_command()} {entry.hf_hub_id} "
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
                # torch.hub checks the hash (or its published prefix) while downloading and keeps no bad file.
                prefix = entry.sha256 or entry.sha256_prefix
                torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=prefix, progress=True)
            except Exception as err:  # network errors and torch.hub's hash mismatch come in many types
                path.unlink(missing_ok=True)
                raise _missing(entry, f"the download failed ({type(err).__name__}: {err})") from err
            if prefix:
                return path
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


# A pretrained file must fill at least this share of the tensors it is meant for, or it is of another family.
MIN_PRETRAINED_SHARE = 0.5


@dataclass(frozen=True)
class SkippedTensor:
    """A tensor of the file or of the model that was not loaded, and why.

    Attributes:
        key: the name (the model's; the file's when the model has no place for it).
        file_shape: its shape in the file, None when the file has no such tensor.
        model_shape: its shape in the model, None when the model has no such tensor.
        reason: why it was not loaded.
        allowed: the loader accepts this skip (a head of another class count,
            a part the file cannot have); False: refused unless ``partial``.
    """

    key: str
    file_shape: tuple[int, ...] | None
    model_shape: tuple[int, ...] | None
    reason: str
    allowed: bool


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did: counts, and a row for every skipped tensor.

    ``str(report)`` is the summary line followed by the table; the same text
    for ``create_model(pretrained=...)`` (a warning, when anything was skipped)
    and a recipe's ``model.pretrained`` (printed by ``msfusion train``).
    """

    path: Path
    weights: str | None
    loaded: int
    expected: int
    what: str
    skipped: tuple[SkippedTensor, ...]
    not_in_file: str = ""

    @property
    def refused(self) -> list[SkippedTensor]:
        return [row for row in self.skipped if not row.allowed]

    def summary(self) -> str:
        source = f" ({self.weights})" if self.weights else ""
        # Rounded down: 548 of 550 is 99 %, never a "100 %" beside skipped tensors.
        share = 100 * self.loaded // max(self.expected, 1)
        text = f"{self.path}{source}: loaded {self.loaded} of {self.expected} {self.what} ({share}%)"
        if self.not_in_file:
            text += f"; {self.not_in_file}"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped"
        return text

    def table(self, limit: int | None = None) -> str:
        """The skipped tensors: key, shape in the file, shape in the model, reason (``limit`` rows at most)."""
        if not self.skipped:
            return ""

        def shape(value: tuple[int, ...] | None) -> str:
            return "-" if value is None else ("x".join(map(str, value)) or "scalar")

        rows = [("tensor", "in file", "in model", "reason")]
        shown = self.skipped if limit is None else self.skipped[:limit]
        rows += [(r.key, shape(r.file_shape), shape(r.model_shape), r.reason) for r in shown]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
            for row in rows
        ]
        lines.insert(1, "  " + "  ".join("-" * w for w in widths) + "  " + "-" * 6)
        if limit is not None and len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        table = self.table()
        return self.summary() + (":\n" + table if table else "")


def _head_key(key: str) -> bool:
    """A tensor of the classifier or of a segmentation head: its shape follows the class count."""
    return key.startswith(CLASSIFIER_PREFIXES)


def _may_stay_initialised(key: str) -> bool:
    """Parts a backbone or classifier file cannot hold: heads, decoders, necks, add-ons, ViTDet's pyramid."""
    return (
        _head_key(key)
        or "simple_pyramid." in key
        or key.startswith(("decode_head.", "auxiliary_head.", "neck.", "addon."))
    )


def load_pretrained(
    model: nn.Module, spec: str | Path | bool, model_name: str | None = None, *, partial: bool = False
) -> LoadReport:
    """Initialise ``model`` from ``spec`` (True, a weights name, or a path): the one pretrained loader.

    ``create_model(pretrained=...)`` and a recipe's ``model.pretrained`` both
    call it. The file is read safely (``read_state_dict``) and brought to the
    model's keys (official SegNeXt / mmsegmentation, timm and torchvision
    layouts, an encoder file into a composed model's ``backbone.``). Every
    tensor that fits by name and shape is loaded; every other one is a row
    of the report with its shape in the file and in the model. Accepted
    without ``partial``: a head of another class count (fine-tuning, as timm
    and mmsegmentation do), parts the file cannot have (the decoder of an
    encoder file, necks, add-ons), the classifier of a file given to a
    features-only model. Refused without ``partial``: a tensor of another
    shape outside the head, a tensor missing from the file, a tensor of the
    file with no place in the model. A file that fills less than
    ``MIN_PRETRAINED_SHARE`` of what it is meant for is of another family
    and refused even when nothing else is wrong.

    Args:
        model: the freshly built model.
        spec: True (the variant's default weights), a weights name
            (``list_weights()``), or a file path.
        model_name: for messages and for ``True`` (default: ``model.model_cfg``'s name).
        partial: load whatever fits (``model.pretrained_partial``), however little.

    Returns:
        The :class:`LoadReport`.

    Raises:
        CheckpointError: with the summary and the table of refused tensors.
        WeightsError, FileNotFoundError: the file cannot be found or trusted.
    """
    from msfusion.checkpoint import adapt_layout, read_state_dict

    model_name = model_name or (getattr(model, "model_cfg", None) or {}).get("name") or type(model).__name__
    path, entry = resolve_pretrained(model_name, model, spec)
    no_place: dict[str, Any] = {}
    state = adapt_layout(model, read_state_dict(path), path, unused=no_place)
    own = model.state_dict()
    encoder_only = (
        bool(state)
        and all(k.startswith("backbone.") for k in state)
        and any(not k.startswith("backbone.") for k in own)
    )
    target = [k for k in own if k.startswith("backbone.")] if encoder_only else list(own)
    own_top = {k.split(".", 1)[0] for k in own}
    rows: list[SkippedTensor] = [
        SkippedTensor(k, tuple(v.shape), None, "no place in a features-only backbone (the file's head)", True)
        for k, v in no_place.items()
    ]
    fits = {}
    for key, tensor in state.items():
        if key not in own:
            headless = _head_key(key) and key.split(".", 1)[0] not in own_top
            reason = "the model has no classifier" if headless else "no place in the model"
            rows.append(SkippedTensor(key, tuple(tensor.shape), None, reason, headless))
        elif tuple(tensor.shape) != tuple(own[key].shape):
            head = _head_key(key)
            reason = (
                "another shape in the head (another class count): initialised"
                if head
                else ("another shape outside the head")
            )
            rows.append(SkippedTensor(key, tuple(tensor.shape), tuple(own[key].shape), reason, head))
        else:
            fits[key] = tensor
    for key in target:
        if key not in state:
            allowed = _may_stay_initialised(key)
            reason = "not in the file: initialised (a part the file cannot have)" if allowed else "not in the file"
            rows.append(SkippedTensor(key, None, tuple(own[key].shape), reason, allowed))
    loaded = sum(k in fits for k in target)
    report = LoadReport(
        path=Path(path),
        weights=entry.name if entry else None,
        loaded=loaded,
        expected=len(target),
        what="backbone tensors" if encoder_only else "model tensors",
        skipped=tuple(rows),
        not_in_file=f"the other {len(own) - len(target)} (decoder) initialised: an encoder file"
        if encoder_only
        else "",
    )
    hint = (
        "To initialise from it anyway, set model.pretrained_partial: true in a recipe, or pass "
        "pretrained_partial=True to create_model."
    )
    if loaded < MIN_PRETRAINED_SHARE * len(target) and not partial:
        raise CheckpointError(
            f"{report.summary()}. The file does not fit {model_name!r}: at least {MIN_PRETRAINED_SHARE:.0%} must "
            f"load; is it a checkpoint of this family? {hint}"
        )
    refused = report.refused
    if refused and not partial:
        table = LoadReport(report.path, report.weights, loaded, len(target), report.what, tuple(refused))
        raise CheckpointError(
            f"{report.summary()}; {len(refused)} refused, the file does not fit {model_name!r}: is it a file of "
            f"this variant? {hint}\n{table.table(limit=20)}"
        )
    model.load_state_dict(fits, strict=False)
    return report


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
