"""Channels to citizens beyond the web page: the 12345 WeChat official account (message server,
dialogue, H5 sign-in, chat photos) and notifications (the outbox written by a trigger on case events,
its sender, WeChat template messages and SMS).

Uses core, cases (the workflow, the citizen channel's rules) and field (photo checks and stores)."""
