"""Texts of a small valid project file, shared by the config tests."""

PROJECT = """\
application: shop
repo: ./app
deploy_to: /srv/shop
restart:
  web: sh bin/restart
"""
