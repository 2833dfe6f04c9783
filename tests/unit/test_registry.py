"""engine.registry: one registry type; a duplicate is an error that names both places."""
from __future__ import annotations

import sys
import threading
import types

import pytest

from engine.errors import OculaError, UnsupportedModelError
from engine.registry import DuplicateRegistrationError, NotRegisteredError, Registry, RegistryError


def _one() -> int:
    return 1


def _two() -> int:
    return 2


def test_register_get_and_registration_order() -> None:
    reg: Registry[str, int] = Registry("number")
    reg.register("b", 2)
    reg.register("a", 1)
    reg.register("c", 3)
    assert reg.get("a") == 1 and reg["c"] == 3
    assert list(reg) == ["b", "a", "c"] == reg.keys()
    assert reg.values() == [2, 1, 3] and reg.items()[0] == ("b", 2)
    assert "a" in reg and "z" not in reg and len(reg) == 3
    assert reg.find("z") is None and reg.find("z", 0) == 0


def test_duplicate_registration_names_both_places() -> None:
    reg: Registry[str, object] = Registry("runtime loader")
    reg.register("onnx", _one)
    with pytest.raises(DuplicateRegistrationError) as err:
        reg.register("onnx", _two)
    message = str(err.value)
    assert "runtime loader 'onnx' is registered twice" in message
    assert "test_registry._one" in message and "test_registry._two" in message
    assert message.count("test_registry.py:") == 2  # both call sites, file:line
    assert isinstance(err.value, OculaError) and isinstance(err.value, ValueError)
    assert reg.get("onnx") is _one  # the first one stays


def test_replace_on_purpose_and_unregister() -> None:
    reg: Registry[str, object] = Registry("thing")
    reg.register("x", _one)
    reg.register("x", _two, replace=True)
    assert reg.get("x") is _two and list(reg) == ["x"]
    assert reg.unregister("x") is _two and reg.unregister("x") is None
    reg.register("x", _one)  # free again


def test_decorator_form() -> None:
    reg: Registry[str, object] = Registry("handler")

    @reg.registering("f")
    def f() -> None: ...

    assert reg.get("f") is f
    assert "test_registry.py:" in reg.where("f")
    with pytest.raises(DuplicateRegistrationError, match="handler 'f' is registered twice"):

        @reg.registering("f")
        def g() -> None: ...


def test_unknown_key_lists_known_keys_and_suggests() -> None:
    reg: Registry[str, int] = Registry("detector family", hint="Set family in the sidecar.")
    for key in ("yolo", "owl", "mtcnn"):
        reg.register(key, 0)
    with pytest.raises(NotRegisteredError) as err:
        reg.get("yolov")
    text = str(err.value)
    assert "unknown detector family 'yolov'" in text
    assert "Did you mean 'yolo'?" in text
    assert "Known: yolo, owl, mtcnn." in text and text.endswith("Set family in the sidecar.")
    assert isinstance(err.value, LookupError) and isinstance(err.value, RegistryError)
    with pytest.raises(NotRegisteredError, match="Known: yolo") as err:
        reg.get("zzz")
    assert "Did you mean" not in str(err.value)


def test_missing_error_type_is_the_registrys_choice() -> None:
    reg: Registry[str, int] = Registry("runtime loader", missing=UnsupportedModelError)
    with pytest.raises(UnsupportedModelError, match="unknown runtime loader 'x'. Known: none."):
        reg.get("x")


def test_populate_runs_once_on_first_read_not_on_creation() -> None:
    calls = []
    reg: Registry[str, int] = Registry("family", populate=lambda: (calls.append(1),
                                                                   reg.register("a", 1)))
    assert calls == []
    assert reg.get("a") == 1 and list(reg) == ["a"] and reg.get("a") == 1
    assert calls == [1]


def test_populate_may_fill_another_registry_and_read_itself() -> None:
    index: Registry[str, str] = Registry("model type")

    def populate() -> None:
        families.register("detr-like", "F")
        assert list(families) == ["detr-like"]  # a read during population does not recurse
        index.register("detr", "detr-like")

    families: Registry[str, str] = Registry("family", populate=populate)
    index._populate, index._populated = families.load, False
    assert index.get("detr") == "detr-like" and families.get("detr-like") == "F"


def test_a_failing_populate_is_retried() -> None:
    state = {"fail": True}

    def populate() -> None:
        if state["fail"]:
            raise RuntimeError("boom")
        reg.register("a", 1)

    reg: Registry[str, int] = Registry("family", populate=populate)
    with pytest.raises(RuntimeError):
        reg.get("a")
    state["fail"] = False
    assert reg.get("a") == 1


def test_populate_from_threads_runs_once() -> None:
    calls = []
    started = threading.Event()

    def populate() -> None:
        calls.append(1)
        started.wait(0.05)
        reg.register("a", 1)

    reg: Registry[str, int] = Registry("family", populate=populate)
    results = []
    threads = [threading.Thread(target=lambda: results.append(reg.get("a"))) for _ in range(8)]
    for t in threads:
        t.start()
    started.set()
    for t in threads:
        t.join()
    assert calls == [1] and results == [1] * 8


def _fake_module(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def test_lazy_entries_import_their_module_on_first_get() -> None:
    reg: Registry[str, object] = Registry("runtime loader")

    def load() -> str:
        return "loaded"

    load.__module__ = "fake_backend_attr"
    _fake_module("fake_backend_attr", load=load)
    reg.register_lazy("fake", "fake_backend_attr", "load")
    assert "fake" in reg and list(reg) == ["fake"] and reg.values() == []
    assert reg.get("fake") is load and reg.values() == [load]
    sys.modules.pop("fake_backend_attr")


def test_lazy_module_may_register_itself_and_others_may_not() -> None:
    reg: Registry[str, object] = Registry("runtime loader")
    reg.register_lazy("self", "fake_backend_self")

    def load() -> None: ...

    load.__module__ = "fake_backend_self"

    module = _fake_module("fake_backend_self")
    reg.register("self", load)  # the promised module registering: fine
    assert reg.get("self") is load
    sys.modules.pop(module.__name__)

    reg.register_lazy("other", "fake_backend_other")
    with pytest.raises(DuplicateRegistrationError, match="promised"):
        reg.register("other", _one)
    with pytest.raises(DuplicateRegistrationError):
        reg.register_lazy("other", "somewhere_else")


def test_lazy_module_that_does_not_register_is_an_error() -> None:
    reg: Registry[str, object] = Registry("runtime loader")
    _fake_module("fake_backend_silent")
    reg.register_lazy("silent", "fake_backend_silent")
    with pytest.raises(RegistryError, match="expected to register it"):
        reg.get("silent")
    sys.modules.pop("fake_backend_silent")


def test_scope_and_snapshot_undo_registrations() -> None:
    reg: Registry[str, int] = Registry("handler")
    reg.register("a", 1)
    with reg.scope():
        reg.register("a", 2, replace=True)
        reg.register("b", 3)
        reg.unregister("a")
    assert reg.items() == [("a", 1)]
    saved = reg.snapshot()
    reg.register("c", 4)
    reg.restore(saved)
    assert list(reg) == ["a"]


def test_registry_module_imports_only_engine_errors() -> None:
    import ast
    from pathlib import Path

    import engine.registry as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    engine_imports = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                      and (node.module or "").startswith("engine")}
    engine_imports |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                       for alias in node.names if alias.name.startswith("engine")}
    assert engine_imports == {"engine.errors"}


# -- the engine's registries -----------------------------------------------------------------


def test_a_second_handler_for_a_task_is_an_error() -> None:
    from engine.jobs import handler_protocol as handlers

    class First(handlers.BaseHandler):
        pass

    class Second(handlers.BaseHandler):
        pass

    with handlers.HANDLERS.scope():
        handlers.unregister_handler("registry-test")
        handlers.register_handler("registry-test", First)
        with pytest.raises(DuplicateRegistrationError) as err:
            handlers.register_handler("registry-test", Second)
        assert "First" in str(err.value) and "Second" in str(err.value)
        assert str(err.value).count("test_registry.py:") == 2  # the callers, not the wrapper
        assert isinstance(handlers.get_handler("registry-test"), First)
        handlers.register_handler("registry-test", Second, replace=True)
        assert isinstance(handlers.get_handler("registry-test"), Second)
    assert "registry-test" not in handlers.registered_tasks()


def test_a_second_loader_for_a_runtime_is_an_error() -> None:
    from engine.runtimes import BACKEND_MODULES, LOADERS, loader_for, register_loader

    assert list(LOADERS)[: len(BACKEND_MODULES)] == list(BACKEND_MODULES)  # promised, not imported
    with LOADERS.scope():
        @register_loader("registry-test")
        def first(card, path, placement, **options): ...

        with pytest.raises(DuplicateRegistrationError, match="runtime loader 'registry-test'"):
            @register_loader("registry-test")
            def second(card, path, placement, **options): ...

        assert loader_for("registry-test") is first
        # promised to engine.runtimes.onnx_backend (or registered by it, once imported)
        with pytest.raises(DuplicateRegistrationError, match="runtime loader 'onnx'.*onnx_backend"):
            @register_loader("onnx")
            def third(card, path, placement, **options): ...
    with pytest.raises(UnsupportedModelError, match="Did you mean 'onnx'"):
        loader_for("onx")


def test_detector_families_are_data_with_unique_names_and_model_types() -> None:
    import importlib

    from engine.tasks import detect
    from engine.tasks.detectors import FAMILY_MODULES

    families = list(detect.FAMILIES)
    assert [f.name for f in families] == [
        importlib.import_module(m).FAMILY.name for m in FAMILY_MODULES]
    assert {"transformers-detection", "owl", "grounding-dino", "florence2", "yolo",
            "mtcnn", "mtcnn-onnx"} == {f.name for f in families}
    assert detect.FAMILIES.get("owl").open_vocabulary
    assert detect.FAMILIES.by_model_type.get("rt_detr") == "transformers-detection"
    assert detect.FAMILIES.by_sidecar.get("yolo") == "yolo"
    assert detect.FAMILIES.by_sidecar.get("mtcnn-onnx") == "mtcnn-onnx"


def test_a_second_detector_family_or_model_type_is_an_error() -> None:
    from engine.tasks import detect

    def run(runner, images, opts):
        return []

    with detect.FAMILIES.by_name.scope(), detect.FAMILIES.by_model_type.scope():
        with pytest.raises(DuplicateRegistrationError) as err:
            detect.register_family(detect.DetectorFamily("my-detr", run, model_types=("detr",)))
        message = str(err.value)
        assert "detector model type 'detr' is registered twice" in message
        assert "engine.tasks.detectors.detr_like.FAMILY" in message
        assert "test_registry.py:" in message
        assert "my-detr" not in detect.FAMILIES.by_name  # refused whole: nothing left behind
        with pytest.raises(DuplicateRegistrationError, match="detector family 'yolo'"):
            detect.register_family(detect.DetectorFamily("yolo", run))
        mine = detect.register_family(detect.DetectorFamily("mine", run, model_types=("mine",)))
        assert detect.FAMILIES.get("mine") is mine
    assert "mine" not in detect.FAMILIES.by_name and "mine" not in detect.FAMILIES.by_model_type


def test_segmenter_families_are_data_and_refuse_duplicates() -> None:
    from engine.tasks import segment

    names = [f.name for f in segment.FAMILIES]
    assert names == ["semantic", "semantic_logits", "universal", "sam", "matting"]
    assert segment.FAMILIES.get("universal").modes == ("panoptic", "instance", "semantic")
    assert segment.FAMILIES.by_variant.get("matting") == "matting"
    with pytest.raises(DuplicateRegistrationError, match="segmenter model type 'sam'"):
        segment.register_family(segment.SegmenterFamily("sam2-ish", lambda *a: [],
                                                        model_types=("sam",)))
    assert "sam2-ish" not in segment.FAMILIES.by_name


def test_captioner_families_and_restorer_specs_refuse_duplicates() -> None:
    from engine.tasks import caption, restore

    with pytest.raises(DuplicateRegistrationError, match="captioner family 'blip'"):
        caption.register_family("blip", caption.FAMILIES.get("git"))
    assert caption.family_for("blip").name == "blip"
    with pytest.raises(DuplicateRegistrationError, match="restorer spec builder 'onnx'"):
        restore.register_spec("onnx")(lambda runner: None)


def test_explain_methods_are_the_documented_methods_with_capabilities() -> None:
    from engine.explain.api import EXPLAIN_METHODS, runner_for
    from engine.explain.maps import METHODS

    assert tuple(EXPLAIN_METHODS) == METHODS
    assert {m.name for m in EXPLAIN_METHODS.values() if m.onnx} == {
        "raw", "rollout", "dino", "discover", "cls_similarity", "patch_similarity"}
    assert EXPLAIN_METHODS.get("relevance").gradients
    detr = types.SimpleNamespace(config=types.SimpleNamespace(model_type="detr"))
    vit = types.SimpleNamespace(config=types.SimpleNamespace(model_type="vit"))
    assert runner_for(detr, "rollout") is runner_for(vit, "detr")  # DETR's own maps
    assert runner_for(vit, "rollout") is EXPLAIN_METHODS.get("raw").run
    with pytest.raises(DuplicateRegistrationError):
        EXPLAIN_METHODS.register("raw", EXPLAIN_METHODS.get("dino"))


def test_what_the_catalog_derives_from_a_sidecar_names_registered_families() -> None:
    """engine.catalog.sidecar sits below the tasks, so it names families by string: each of
    those strings must be a family (or model type) of the task its output is for."""
    from engine.catalog.sidecar import DERIVED_KEYS, OUTPUTS
    from engine.tasks import detect, segment

    tables = {"detect": detect.FAMILIES, "segment": segment.FAMILIES}
    for output, keys in DERIVED_KEYS.items():
        table = tables[OUTPUTS[output][0]]
        if "family" in keys:
            assert keys["family"] in table.by_sidecar, output
        if "model_type" in keys:
            assert keys["model_type"] in table.by_model_type, output
