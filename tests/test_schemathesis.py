"""Property-based API test: schemathesis generates requests from the OpenAPI schema; every response must be
documented, well-formed and never a server error."""

import tempfile

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis not installed (pip install -e .[dev])")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from emolens.live.settings import PipelineSettings  # noqa: E402
from emolens.serve import ServeSettings, create_app  # noqa: E402

#: the app's data folder, removed when the test process ends
_DATA = tempfile.TemporaryDirectory(prefix="emolens-st-")


def _app():
    return create_app(
        ServeSettings(
            data_dir=_DATA.name,
            pipeline=PipelineSettings(detector="haar"),
            hosts=["*"],
            max_queued_jobs=2,
        )
    )


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case):
    # An upload the schema allows (any bytes) may still not be an image or video: those 400/415 answers are
    # correct, so "schema-valid data must be accepted" is the one check left out.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
