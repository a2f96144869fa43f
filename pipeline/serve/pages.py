"""The page to try the model (GET /). Swagger UI (/docs) comes with the app itself: see create_app."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = Path(__file__).with_name("page.html")

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def page():
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"cache-control": "no-cache"})
