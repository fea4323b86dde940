"""The DICOMweb URL surface (PS3.18), in one list. Imports: starlette, dicomweb.*."""

from __future__ import annotations

from starlette.routing import Route

from dcmnode.dicomweb import stow


def routes() -> list[Route]:
    return [
        Route("/studies", stow.store, methods=["POST"]),
        Route("/studies/{study}", stow.store, methods=["POST"]),
    ]
