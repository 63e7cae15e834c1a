"""hope: Nested Learning and the Hope architecture in PyTorch.

See SPEC sections 0-7 (shared/SPEC.md in the project) for the mathematics; the package is laid out as
`ops` (pure tensor functions), `layers` (nn.Modules), `models` (one file per architecture), `optim`
(deep optimizers), `data` (corpora and tokenizers), `train.py` (the training loop) and `cli.py`.
"""

import os as _os
import sys as _sys

# The memory layers run many small tensor ops, each an OpenMP parallel region. With libgomp's
# default (a waiting thread spins about 3 ms) threads that lose their core to another process stall
# every op (10x slower training on a busy 2-core machine); with no spinning at all (PASSIVE) every
# op pays a sleep and wake-up (Hope's step 1.7x slower on an idle machine). A short spin (1,000
# iterations, about 10 us) keeps most of both (docs/DEVIATIONS.md). Only effective before torch is
# imported, and only when the user has chosen neither; elsewhere than Linux (no libgomp) PASSIVE.
if "torch" not in _sys.modules and not any(k in _os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
    if _sys.platform == "linux":
        _os.environ["GOMP_SPINCOUNT"] = "1000"
    else:
        _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _tune_malloc() -> None:
    """Keep freed memory in the heap instead of returning it to the system (glibc only).

    A training step of a memory layer allocates and frees hundreds of state-sized tensors (a few MB
    each). By default glibc serves each from fresh pages (mmap, or a trimmed heap top), so every one
    is paid again in page faults: at `hope_tiny` (16 x 128) about 167K minor faults per step. A fixed
    mmap threshold of 32 MiB and a high trim threshold make those tensors reuse the heap (about 30K
    faults, less system time; `benchmarks/page_faults.py`, figures in docs/DEVIATIONS.md). The
    process keeps up to the trim threshold of freed memory for reuse. Skipped when the user set any `MALLOC_*` variable or
    `HOPE_MALLOC_TUNING=0`, and off glibc.
    """
    if _sys.platform != "linux" or _os.environ.get("HOPE_MALLOC_TUNING", "1") == "0":
        return
    if any(k.startswith("MALLOC_") for k in _os.environ) or "glibc.malloc" in _os.environ.get("GLIBC_TUNABLES", ""):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
    mallopt(M_TOP_PAD, 64 << 20)


_tune_malloc()

__version__ = "0.1.0"


def _register_when_transformers_loads() -> None:
    """Make `AutoModelForCausalLM.from_pretrained(DIR)` work for our models after `import hope`, without
    importing transformers (or torch) here.

    When transformers imports its `configuration_auto` module, the model-type table there
    (`CONFIG_MAPPING`) learns to run `hope.hf.register()` the first time one of our model types is
    looked up: transformers is fully imported by then, so registering cannot meet a half-imported
    module. If transformers' auto classes are already imported, this registers at once. Without
    transformers installed it does nothing; a failure is a warning, never an error of either import.
    """
    import importlib.util  # (not importlib.abc: it imports pathlib and importlib.resources, 30 ms)

    target = "transformers.models.auto.configuration_auto"

    def register():
        try:
            from hope.hf import register as hf_register

            hf_register()
        except Exception as e:  # noqa: BLE001 - an integration must not break transformers
            import warnings

            warnings.warn(f"hope models not registered with transformers: {e}", stacklevel=3)

    def hook(module):
        from hope.runs import HF_ARCHS

        mapping = module.CONFIG_MAPPING
        base = type(mapping)

        class _WithHope(base):
            def __getitem__(self, key):
                if key in HF_ARCHS:
                    register()
                return super().__getitem__(key)

            def __contains__(self, key):
                if key in HF_ARCHS:
                    register()
                return super().__contains__(key)

        mapping.__class__ = _WithHope

    if target in _sys.modules:
        register()
        return
    if importlib.util.find_spec("transformers") is None:
        return

    class _AfterImport:
        """Runs `hook` on `target` right after it is executed (a post-import hook): a meta-path finder
        that hands out the real spec with itself as the loader, delegating to the real loader."""

        def __init__(self):
            self.loader = None

        def find_spec(self, fullname, path, target_=None):
            if fullname != target or self.loader is not None:
                return None
            for finder in _sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target_)
                if spec is not None:
                    self.loader, spec.loader = spec.loader, self
                    return spec
            return None

        def create_module(self, spec):
            return self.loader.create_module(spec)

        def exec_module(self, module):
            self.loader.exec_module(module)
            if self in _sys.meta_path:
                _sys.meta_path.remove(self)
            try:
                hook(module)
            except Exception as e:  # noqa: BLE001
                import warnings

                warnings.warn(f"hope models not registered with transformers: {e}", stacklevel=2)

    _sys.meta_path.insert(0, _AfterImport())


_register_when_transformers_loads()
