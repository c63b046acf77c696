"""loadtests.profile sorts py-spy's sampled stacks into stages by the frames they hold, and sets the way in and
out of the service against its CPU per photo."""
from loadtests.profile import LOAD_GENERATOR, OTHER, stage_of, way_in_and_out


def test_bentoml_worker_main_is_the_event_loop_not_our_request_code() -> None:
    loop = "main (_bentoml_impl/worker/service.py:230);Runner.run (asyncio/runners.py:118)"
    assert stage_of(loop) == OTHER


def test_our_request_code_and_the_classifier_are_told_apart() -> None:
    ours = "run (anyio/_backends/_asyncio.py:1);read_image_request (service/uploads.py:88)"
    classifier = "classify (service/engine.py:57);predict_crops (service/onnx_model.py:120)"
    assert stage_of(ours) == "request parsing and answer (ours)"
    assert stage_of(classifier) == "ONNX Runtime (classifier)"


def test_the_way_in_and_out_is_the_blank_requests_cost_above_in_process_against_the_api_workers_cpu() -> None:
    rows = [{"name": "in-process", "blank_cpu_ms": 0.25, "processes": {"in-process": {"cpu_ms_per_photo": 35.0}}},
            {"name": "service", "blank_cpu_ms": 1.75, "processes": {"FaceCheck-1": {"cpu_ms_per_photo": 21.0},
                                                                  "FaceCheck-2": {"cpu_ms_per_photo": 19.0},
                                                                  LOAD_GENERATOR: {"cpu_ms_per_photo": 1.0}}},
            {"name": "side by side", "blank_cpu_ms": None, "processes": {"process 1": {"cpu_ms_per_photo": 17.0}}}]
    line = way_in_and_out(rows)
    assert "adds 1.50 ms to each request: 3.8% of the service's 40.0 CPU ms per photo" in line
