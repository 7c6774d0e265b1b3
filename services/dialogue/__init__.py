"""The dialogue service: conversation trackers, flows, slot filling, fallback, handoff and
response rendering. The pure engine is `services.dialogue.engine`."""
