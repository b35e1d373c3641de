"""Evaluation of an erasure: prompt plans, judges, metrics (UA/IRA/CRA, CLIP score, FID/KID), reports."""
