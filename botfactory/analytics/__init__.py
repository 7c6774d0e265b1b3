"""Conversation analytics of one bot from its `conv.event.<bot>.*` events: figures
(`aggregate`) and the self-contained HTML report (`html`)."""

from botfactory.analytics.aggregate import Figures, FlowStats, aggregate

__all__ = ["Figures", "FlowStats", "aggregate"]
