"""loadtests.profile sorts py-spy's sampled stacks into stages by the frames they hold."""
from loadtests.profile import OTHER, stage_of


def test_bentoml_worker_main_is_the_event_loop_not_our_request_code() -> None:
    loop = "main (_bentoml_impl/worker/service.py:230);Runner.run (asyncio/runners.py:118)"
    assert stage_of(loop) == OTHER


def test_our_request_code_and_the_classifier_are_told_apart() -> None:
    ours = "run (anyio/_backends/_asyncio.py:1);read_image_request (service/uploads.py:88)"
    classifier = "classify (service/engine.py:57);predict_crops (service/onnx_model.py:120)"
    assert stage_of(ours) == "request parsing and answer (ours)"
    assert stage_of(classifier) == "ONNX Runtime (classifier)"
