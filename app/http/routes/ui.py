"""The live web view: GET / (one page) and its static files under /static/ (shipped in the package)."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The page; it calls the JSON API with relative URLs, so it also works behind a path prefix."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def mount_ui(app: FastAPI) -> None:
    """Serve the page at / and its assets at /static/ (plain files: no build step, no CDN)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
