"""``twistd nipc``: the daemon's command line."""

from __future__ import annotations

import os

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from nipc import config as configuration
from nipc.heap import take_over_memory
from nipc import logs as nipc_logs
from nipc.logs import LogFile, open_log
from nipc.service import NipcService


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Run the NIPC daemon: route 'CONNECT <path>@<host>' requests from the local socket "
        "to peer daemons with the caller's Kerberos identity, and accept routed connections "
        "from peers. Every setting lives in the TOML file (see etc/nipcd.toml)."
    )
    optParameters = [
        ["config", "c", "/etc/nipc/nipcd.toml", "Path of the daemon's TOML configuration file."],
    ]


@implementer(IServiceMaker, IPlugin)
class ServiceMaker:
    tapname = "nipc"
    description = "Networked IPC: reach Unix sockets on other hosts as yourself (Kerberos)."
    options = Options

    def makeService(self, options: Options) -> NipcService:
        options["config"] = os.path.abspath(options["config"])
        try:
            cfg = configuration.load(options["config"])
            logs = LogFile()
            logs.switch(cfg.log.file, open_log(cfg.log.file))
            nipc_logs.journal_choice = (cfg.log.journal, str(cfg.log.journal_socket))
        except configuration.ConfigError as e:
            raise SystemExit(f"nipc: {e}") from None
        take_over_memory()
        # Nothing may be relative to where the daemon was started (issue 14 item 4):
        # its working directory is reachable as /proc/self/cwd by its own threads.
        os.chdir("/")
        return NipcService(cfg, source=options["config"], logs=logs)


serviceMaker = ServiceMaker()

__all__ = ["serviceMaker", "Options"]
