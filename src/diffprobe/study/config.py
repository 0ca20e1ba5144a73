"""The study's config: which models to train, which cells to probe, how hard to train each probe."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

from diffprobe.backbones.registry import BLOCKLESS_KINDS, parse_backbone_spec
from diffprobe.config import Config, ConfigError
from diffprobe.data import ProbeWorldConfig
from diffprobe.data.registry import DEFAULT_DATASET
from diffprobe.data.splits import ROLES
from diffprobe.data.world.dataset import probeworld_spec
from diffprobe.models import WALTConfig
from diffprobe.readouts.match import MatchGrid
from diffprobe.spec import BackboneSpec
from diffprobe.study.report_tasks import IMAGE, LATENTS, PIXELS, UNBLOCKED, UNTRAINED, VIDEO
from diffprobe.tasks import TASKS
from diffprobe.tasks.probe_config import ProbeConfig
from diffprobe.train.runs import DenoiserRunConfig, FeatureNetRunConfig, TokenizerRunConfig

_TINY_WORLD = probeworld_spec(ProbeWorldConfig.preset("tiny").replace(train_size=2048, val_size=256, test_size=512))
# The CPU study: every task at the headline cell for the twins and the three controls, two probe seeds each; noise and
# block sweeps on action (the first probe seed). Sized to finish on a CPU in minutes (the README states the measured
# time and the machine's matmul figure).
_TINY: dict[str, Any] = {
    "name": "probeworld-tiny",
    "dataset": _TINY_WORLD,
    "tokenizer": TokenizerRunConfig.PRESETS["tiny"],
    "twin": DenoiserRunConfig.PRESETS["walt-tiny"],
    "feature_net": FeatureNetRunConfig.PRESETS["tiny"],
    "probe": ProbeConfig.PRESETS["tiny"],
    "probe_seeds": [0, 1],
    "noise_sweep": [0.0, 200.0, 700.0],
    "block_sweep": [2, 4, 6],
    "sweep_tasks": ["action"],
    "generation_samples": 64,
    "probe_clips": {"train": 2048, "val": 256, "test": 512},
    "sampling_steps": 20,
    "match": True,
    "motion_clips": 8,
}
# The tiny study and the analyses past the paper's: five noise levels and every block in the sweeps, on action, depth
# and point tracking, a second model size (micro) and two earlier checkpoints (training budget), each on the sweep
# tasks. Same study name: it can extend a tiny run (--out runs/study-tiny), training only what the tiny study did not.
_TINY_MORE: dict[str, Any] = {**_TINY, "noise_sweep": [0.0, 100.0, 200.0, 400.0, 700.0],
                              "block_sweep": [1, 2, 3, 4, 5, 6], "budget_steps": [400, 800],
                              "sweep_tasks": ["action", "depth", "point_tracking"],
                              "sizes": {"micro": WALTConfig.PRESETS["micro"]}}

_QUICK_WORLD = probeworld_spec(ProbeWorldConfig.preset("tiny").replace(train_size=512, val_size=64, test_size=128))


def _train(run: dict[str, Any], **train: Any) -> dict[str, Any]:
    """A run preset with ``train`` fields changed (its dataset is the study's: see StudyConfig.dataset)."""
    return {**run, "train": {**run["train"], **train}}


# A first look at the pipeline in a few minutes: every stage runs, on so little training that nothing is measured.
_QUICK: dict[str, Any] = {
    **_TINY,
    "name": "probeworld-quick",
    "caveat": "the quick preset shows the pipeline running end to end; its twins and probes are trained too little "
              "to measure anything. The default (tiny) preset is the one that measures the tasks.",
    "dataset": _QUICK_WORLD,
    "tokenizer": _train(_TINY["tokenizer"], steps=100, warmup_steps=10, ckpt_every=50),
    "twin": _train(_TINY["twin"], steps=200, ckpt_every=100, keep_steps=[100]),
    "feature_net": _train(_TINY["feature_net"], steps=50, warmup_steps=5, ckpt_every=25),
    "probe": {**_TINY["probe"], "steps": 100, "warmup_steps": 10, "eval_every": 50},
    "probe_seeds": [0],
    "noise_sweep": [0.0, 200.0],
    "block_sweep": [2, 4],
    "sweep_tasks": ["action"],
    "budget_steps": [100],
    "generation_samples": 16,
    "probe_clips": {"train": 512, "val": 64, "test": 128},
    "motion_clips": 2,
}


_GPU_CAVEAT = ("a GPU preset that has not been run end to end: its wall time is an estimate from model FLOPs "
               "(`diffprobe study --preset {name} --estimate`) until its own timings.json measures it.")
# The paper's layout on one GPU: the small world (64 px, 17 frames), walt-S twins (12 blocks, headline block 8 =
# two thirds of the depth), probes of the base readout with three learning rates; sweeps as the paper's Figure 5.
_SMALL_WORLD = probeworld_spec(ProbeWorldConfig.preset("small"), "small")
_SMALL: dict[str, Any] = {
    "name": "probeworld-small",
    "caveat": _GPU_CAVEAT.format(name="small"),
    "dataset": _SMALL_WORLD,
    "tokenizer": TokenizerRunConfig.PRESETS["small"],
    "twin": _train(DenoiserRunConfig.PRESETS["walt-S"], steps=50_000, keep_every=10_000),
    "feature_net": _train(FeatureNetRunConfig.PRESETS["tiny"], steps=3000, batch_size=64, warmup_steps=100,
                          ckpt_every=500),
    "probe": {**ProbeConfig.PRESETS["base"], "steps": 4000, "warmup_steps": 200, "eval_every": 500},
    "probe_seeds": [0, 1, 2],
    "block": 8,
    "t": 200.0,
    "noise_sweep": [0.0, 50.0, 100.0, 200.0, 400.0, 700.0],
    "block_sweep": [2, 4, 6, 8, 10, 12],
    "sweep_tasks": ["action", "depth", "point_tracking"],
    "budget_steps": [10_000, 30_000],
    "generation_samples": 1024,
    "sampling_steps": 50,
    "probe_clips": {"train": 8192, "val": 1024, "test": 1024},
    "match": True,
    "motion_clips": 16,
}
# WALT's 128 px latents (16 x 16 per frame) and walt-B twins, for 8 GPUs under torchrun (global batches).
_BASE_WORLD = probeworld_spec(ProbeWorldConfig.preset("small").replace(height=128, width=128, train_size=16384),
                              "small")
_BASE: dict[str, Any] = {
    **_SMALL,
    "name": "probeworld-base",
    "caveat": _GPU_CAVEAT.format(name="base"),
    "dataset": _BASE_WORLD,
    "tokenizer": TokenizerRunConfig.PRESETS["base"],
    "twin": DenoiserRunConfig.PRESETS["walt-B"],
    "probe": {**ProbeConfig.PRESETS["base"], "steps": 10_000, "warmup_steps": 500, "eval_every": 1000},
    "budget_steps": [20_000, 60_000],
    "probe_clips": {"train": 16384, "val": 1024, "test": 1024},
}

_RUNS = ("tokenizer", "twin", "feature_net")

#: placeholders a backbone spec may use for the study's own runs (run_dir-relative paths)
TWIN_VIDEO, TWIN_IMAGE, TOKENIZER = "{twin:video}", "{twin:image}", "{tokenizer}"
TWINS = (TWIN_VIDEO, TWIN_IMAGE)
MAIN = "main"  #: size name of the headline twins (``sizes`` names the others)
#: the default set: the study's own twins and the three backbone controls (the prior is added to every table)
OWN_BACKBONES: dict[str, str] = {name: str(spec) for name, spec in {
    VIDEO: BackboneSpec("walt", TWIN_VIDEO), IMAGE: BackboneSpec("walt", TWIN_IMAGE),
    UNTRAINED: BackboneSpec("walt-untrained", TWIN_VIDEO), LATENTS: BackboneSpec("latents", TOKENIZER),
    PIXELS: BackboneSpec("pixels", options=(("patch", 8), ("tubelet", 2)))}.items()}


@dataclasses.dataclass(frozen=True)
class StudyConfig(Config):
    """One image-vs-video study. The twins share ``twin`` (mode aside); every probe shares ``probe``.

    ``backbones`` names every backbone probed (name -> spec; ``{twin:video}``, ``{twin:image}`` and
    ``{tokenizer}`` stand for the study's own runs, which are trained only when a spec uses them). ``reference`` is
    the (video, image) pair the study compares and ``control`` the backbone the video side is tested against in
    the table's z column. The headline cell of each backbone is (``block``, ``t``) unless ``headline`` gives its own
    (a backbone without blocks, ``latents`` or ``pixels``, is read at block 0, t 0). The noise sweep varies t at the
    reference pair's headline block, the block sweep varies the block at its t (the paper's Figure 5), both on
    ``sweep_tasks``. With the study's own twins as the reference, ``sizes`` adds twins of other widths (model-size
    analysis) and ``budget_steps`` probes earlier checkpoints (training-budget analysis), both at the headline cell
    on ``sweep_tasks``, each with the generation Fréchet distance of its samples.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": _TINY, "tiny-more": _TINY_MORE, "quick": _QUICK,
                                                     "small": _SMALL, "base": _BASE}

    name: str = "probeworld"
    #: a warning printed before the run and above its table (the quick preset measures nothing)
    caveat: str = ""
    #: the study's dataset spec: the tokenizer, the twins and the feature net train on it (their own ``dataset``
    #: fields are set from it), and every task is probed on it unless ``task_data`` names other data for the task
    dataset: str = DEFAULT_DATASET
    #: task -> {role: dataset spec} for train / val / test (``SPEC#SPLIT`` picks a split; see data.splits)
    task_data: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    backbones: dict[str, str] = dataclasses.field(default_factory=lambda: dict(OWN_BACKBONES))
    reference: tuple[str, str] = (VIDEO, IMAGE)  #: (video, image) names in ``backbones``
    control: str = UNTRAINED  #: the backbone the video side's margin is measured against ("" for none)
    headline: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)  #: name -> (block, t)
    tokenizer: TokenizerRunConfig = dataclasses.field(default_factory=TokenizerRunConfig)
    twin: DenoiserRunConfig = dataclasses.field(default_factory=DenoiserRunConfig)
    feature_net: FeatureNetRunConfig = dataclasses.field(default_factory=FeatureNetRunConfig)
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    tasks: tuple[str, ...] = tuple(TASKS)
    block: int = 4  #: headline block (1..depth)
    t: float = 200.0  #: headline noise level (0..1000)
    noise_sweep: tuple[float, ...] = (0.0, 50.0, 100.0, 200.0, 400.0, 700.0)
    block_sweep: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    sweep_tasks: tuple[str, ...] = ("action", "depth", "point_tracking")
    sizes: dict[str, WALTConfig] = dataclasses.field(default_factory=dict)  #: extra model sizes: name -> WALT
    budget_steps: tuple[int, ...] = ()  #: earlier checkpoints to probe (must be kept by twin.train.keep_steps)
    probe_clips: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"train": 1024, "val": 256, "test": 512})  #: first N clips of each split for probes
    #: compute every probe's features as it reads them instead of extracting them into the cache: no disk for
    #: features, the backbones run on every epoch's batches (features/stream.py; ``--estimate`` prints both costs)
    stream: bool = False
    probe_seeds: tuple[int, ...] = (0,)  #: every headline cell is probed once per seed; sweeps use the first
    noise_seeds: tuple[int, ...] = (0,)
    generation_samples: int = 256  #: samples per model for the Fréchet distance
    sampling_steps: int = 25  #: DDIM steps for those samples
    pca_clips: int = 3  #: test clips whose PCA maps go into the report
    #: add the training-free matcher (docs/readouts.md) as point-tracking cells beside the trained probes: every
    #: backbone's headline cell and the reference pair's noise and block sweeps, each noise seed a replicate, its
    #: setting chosen on val from ``match_grid``
    match: bool = False
    match_grid: MatchGrid = dataclasses.field(default_factory=MatchGrid)
    #: the motion experiment (the paper's Fig. 4, docs/motion.md) on this many test clips, for every backbone at its
    #: headline (0: not run)
    motion_clips: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for run in _RUNS:  # the study's dataset is declared once: every run of the study trains on it
            object.__setattr__(self, run, getattr(self, run).replace(dataset=self.dataset))
        super().__post_init__()

    def override(self, assignments: Iterable[str]) -> StudyConfig:
        """As :meth:`Config.override`; a sub-run's dataset is the study's (``dataset=SPEC``), not set on its own."""
        assignments = list(assignments)
        own = [a for a in assignments if any(a.startswith(f"{run}.dataset=") for run in _RUNS)]
        if own:
            raise ConfigError(f"StudyConfig: {own[0]!r}: every run of a study trains on the study's dataset; set it "
                              f"with dataset=SPEC")
        return super().override(assignments)

    #: the fields that define trained artifacts (checked on resume); every other field is the plan, free to grow
    ARTIFACTS: ClassVar[tuple[str, ...]] = ("dataset", "tokenizer", "twin", "feature_net", "sizes")

    def artifacts(self) -> dict[str, Any]:
        """The artifact fields as a JSON-like dict (``sizes``: the extra model sizes, each a trained pair)."""
        data = self.to_dict()
        return {k: data[k] for k in self.ARTIFACTS}

    def backbone_spec(self, name: str) -> BackboneSpec:
        """The typed spec of backbone ``name`` (its path may be one of the study's placeholders)."""
        return parse_backbone_spec(self.backbones[name])

    def own_twins(self) -> bool:
        """Whether the reference pair is the study's own twins (their sizes, checkpoints and samples exist)."""
        return tuple(self.backbone_spec(n) for n in self.reference) == (
            BackboneSpec("walt", TWIN_VIDEO), BackboneSpec("walt", TWIN_IMAGE))

    def uses(self, *runs: str) -> bool:
        """Whether any backbone spec's path is one of the study's own runs ``runs`` (placeholders)."""
        return any(self.backbone_spec(n).path in runs for n in self.backbones)

    def model_of(self, size: str) -> WALTConfig:
        """The WALT config of the twins of one size (:data:`MAIN` or a name in ``sizes``)."""
        return self.twin.model if size == MAIN else self.sizes[size]

    def replicates(self) -> int:
        """How many (noise seed, probe seed) replicates each headline cell has."""
        return len(self.noise_seeds) * len(self.probe_seeds)

    def headline_of(self, name: str) -> tuple[int, float]:
        """The (block, t) a backbone is read at in the headline table."""
        if name in self.headline:
            return self.headline[name]
        return UNBLOCKED if self.backbone_spec(name).kind in BLOCKLESS_KINDS else (self.block, self.t)

    def roles(self, task: str) -> dict[str, str]:
        """The dataset spec of each role of ``task``."""
        return dict(self.task_data[task]) if task in self.task_data else dict.fromkeys(ROLES, self.dataset)

    def validate(self) -> None:
        if not self.probe_seeds or not self.noise_seeds:
            raise ConfigError("StudyConfig.probe_seeds/noise_seeds: need at least one seed each")
        if set(self.probe_clips) != {"train", "val", "test"} or min(self.probe_clips.values()) < 1:
            raise ConfigError(f"StudyConfig.probe_clips: need positive train, val and test counts, "
                              f"got {self.probe_clips}")
        for task, roles in self.task_data.items():
            if task not in TASKS or set(roles) != set(ROLES):
                raise ConfigError(f"StudyConfig.task_data[{task!r}]: needs a known task and a dataset spec for each of "
                                  f"{list(ROLES)}, got {sorted(roles)}")
        names = [*self.reference, *([self.control] if self.control else []), *self.headline]
        missing = [n for n in names if n not in self.backbones]
        if missing:
            raise ConfigError(f"StudyConfig.reference/control/headline: {missing} not in backbones "
                              f"{sorted(self.backbones)}")
        if (self.budget_steps or self.sizes) and not self.own_twins():
            raise ConfigError("StudyConfig.budget_steps/sizes: the training-budget and model-size analyses need the "
                              "study's own twins as the reference pair; set them to [] / {}")
        unknown = [t for t in (*self.tasks, *self.sweep_tasks) if t not in TASKS]
        if unknown:
            raise ConfigError(f"StudyConfig.tasks/sweep_tasks: unknown task(s) {unknown}; known: {list(TASKS)}")
        depth = self.twin.model.depth
        bad = [b for b in (self.block, *self.block_sweep) if not 1 <= b <= depth]
        if bad and self.own_twins():
            raise ConfigError(f"StudyConfig.block/block_sweep: {bad} not in 1..{depth} (the twin's depth)")
        if self.motion_clips < 0 or self.motion_clips > self.probe_clips["test"]:
            raise ConfigError(f"StudyConfig.motion_clips: between 0 and probe_clips.test ({self.probe_clips['test']}), "
                              f"got {self.motion_clips}")
        if any(not 0 <= t <= 1000 for t in (self.t, *self.noise_sweep)):
            raise ConfigError("StudyConfig.t/noise_sweep: noise levels are on 0..1000")
        kept = set(self.twin.train.keep_steps)
        every = self.twin.train.keep_every
        lost = [s for s in self.budget_steps if s not in kept and not (every and s % every == 0)]
        if lost:
            raise ConfigError(f"StudyConfig.budget_steps: checkpoints {lost} are not kept by twin.train.keep_steps "
                              f"{sorted(kept)} / keep_every {every}")
        unsaved = [s for s in self.budget_steps if s % self.twin.train.ckpt_every or s >= self.twin.train.steps]
        if unsaved:
            raise ConfigError(f"StudyConfig.budget_steps: {unsaved} must be multiples of twin.train.ckpt_every "
                              f"({self.twin.train.ckpt_every}) below twin.train.steps ({self.twin.train.steps})")
        for name, size in self.sizes.items():
            if size.depth < self.block:
                raise ConfigError(f"StudyConfig.sizes[{name!r}]: depth {size.depth} < headline block {self.block}")
