"""Blob surface (in progress)."""

from flask import Blueprint

bp = Blueprint("blobs", __name__)
