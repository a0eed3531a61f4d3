# Sourced by bin/ping and bin/members, in the release's directory. It reads
# the release's settings as bin/chat does (releases/<vsn>/env.sh, then
# RELEASE_COOKIE or releases/COOKIE, RELEASE_NODE, RELEASE_DISTRIBUTION), so
# it asks the node bin/chat would ask, with the same cookie.
#
# call "Mod Fun" runs Mod:Fun() on that node with the erl_call the release
# ships and prints the result as an Erlang term; it fails when the node does
# not answer. erl_call reads the cookie from $HOME/.erlang.cookie: it is
# written (by the shell's own printf) into a private HOME, so it never shows
# on a command line.
RELEASE_ROOT=$PWD
RELEASE_NAME=${RELEASE_NAME:-chat}
RELEASE_VSN=${RELEASE_VSN:-$(cut -d' ' -f2 releases/start_erl.data)}
export RELEASE_ROOT RELEASE_NAME RELEASE_VSN
. "releases/$RELEASE_VSN/env.sh"
RELEASE_NODE=${RELEASE_NODE:-$RELEASE_NAME}
RELEASE_DISTRIBUTION=${RELEASE_DISTRIBUTION:-sname}

call() {
  home=$(mktemp -d)
  status=0
  if [ -n "${RELEASE_COOKIE:-}" ]; then
    printf %s "$RELEASE_COOKIE" >"$home/.erlang.cookie" || status=$?
  else
    cat releases/COOKIE >"$home/.erlang.cookie" || status=$?
  fi
  if [ "$status" = 0 ]; then
    HOME=$home erts-*/bin/erl_call "-$RELEASE_DISTRIBUTION" "$RELEASE_NODE" -timeout 10 -a "$1" || status=$?
  fi
  rm -rf -- "$home"
  return "$status"
}
