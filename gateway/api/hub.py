"""Hub surface (in progress)."""

from flask import Blueprint

bp = Blueprint("hub", __name__)
