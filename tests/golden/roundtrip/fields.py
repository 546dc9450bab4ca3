"""Prints the image fields a round trip must keep, from `inspect` JSON on stdin (docker's or
strata's): os/arch, Config.Cmd/Entrypoint/Env/Labels/WorkingDir/User, RootFS layer diff ids."""
import json
import sys

doc = json.load(sys.stdin)
img = doc[0] if isinstance(doc, list) else doc
cfg = img.get("Config") or {}
rootfs = img.get("RootFS") or {}
print("os/arch:", img.get("Os"), img.get("Architecture"))
for key in ("Cmd", "Entrypoint", "Env", "Labels", "WorkingDir", "User"):
    print(key + ":", json.dumps(cfg.get(key) or None, sort_keys=True))
# docker names them RootFS.Layers, strata (as OCI) RootFS.diff_ids: the key names are compared
# by the inspect scenario, the values here.
print("layers:", json.dumps(rootfs.get("Layers") or rootfs.get("diff_ids")))
