"""Running the controller at login: service files rendered as values, installed by one writer.

The shape is honcho's ``export``: each platform (``launchd.py``, ``systemd.py``) is a
set of pure functions that render a :class:`~mlxctl.machine.services.base.File` and
name the commands that load, unload and inspect it; :mod:`.registry` knows them all;
:mod:`.writer` is the only code that writes or removes a service file, and
:mod:`.runner` the only one that runs ``launchctl`` / ``systemctl``.
"""
