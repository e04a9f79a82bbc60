"""Fakes of external services, faithful to the real signatures (see each module)."""

from tests.fakes.fake_modal import FakeModal, make_fake_modal_backend

__all__ = ["FakeModal", "make_fake_modal_backend"]
