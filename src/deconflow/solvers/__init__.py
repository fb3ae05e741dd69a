"""Deconvolution solvers: Richardson–Lucy, RL-TV, Wiener–Tikhonov."""

from deconflow.solvers.richardson_lucy import RichardsonLucy
from deconflow.solvers.tv import RichardsonLucyTV
from deconflow.solvers.wiener import Wiener

__all__ = ["RichardsonLucy", "RichardsonLucyTV", "Wiener"]
