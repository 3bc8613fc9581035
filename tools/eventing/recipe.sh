# Builds Knative Eventing v0.50.0's thirteen binaries into $OUT as
# knative-<command base name> (knative-controller, knative-filter, ...), and
# puts the release's install YAML from the same module beside them as
# knative-eventing-config.tar (config/core, the in-memory channel, the MT
# channel-based broker and the two third_party ConfigMaps its controller needs).
# Run by tools/build.sh from this directory.
# usually: 7-9 minutes (cold)
set -euo pipefail
c=knative.dev/eventing/cmd
mkdir "$OUT/build"
go build -trimpath -ldflags "-s -w" -o "$OUT/build/" \
	$c/controller $c/webhook $c/apiserver_receive_adapter $c/auth_proxy \
	$c/broker/filter $c/broker/ingress $c/mtchannel_broker \
	$c/in_memory/channel_controller $c/in_memory/channel_dispatcher \
	$c/jobsink $c/mtping $c/requestreply $c/event_display
for f in "$OUT"/build/*; do mv "$f" "$OUT/knative-$(basename "$f")"; done
rmdir "$OUT/build"
# Only *.yaml: the module also holds stray editor files ("...yaml~abc (msg)").
e=$(go list -m -f '{{.Dir}}' knative.dev/eventing)
(cd "$e" && find config/core config/channels/in-memory-channel config/brokers/mt-channel-broker \
	third_party/eventing-integrations-latest -type f -name '*.yaml' | LC_ALL=C sort |
	tar --owner=0 --group=0 --mode=u+rw,go+r --mtime=@0 -cf "$OUT/knative-eventing-config.tar" -T -)
