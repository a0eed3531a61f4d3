# Sourced by bin/ping and bin/members, in the release's directory: call
# "Mod Fun" runs Mod:Fun() on the node RELEASE_NODE names and prints the
# result as an Erlang term; it fails when the node does not answer.
# erl_call reads the cookie from $HOME/.erlang.cookie: a private HOME links
# it to releases/COOKIE, so the cookie never shows on a command line.
call() {
  home=$(mktemp -d)
  ln -s "$PWD/releases/COOKIE" "$home/.erlang.cookie"
  names=-name
  if [ "${RELEASE_DISTRIBUTION:-sname}" = sname ]; then names=-sname; fi
  status=0
  HOME=$home erts-*/bin/erl_call "$names" "$RELEASE_NODE" -timeout 10 -a "$1" || status=$?
  rm -rf -- "$home"
  return "$status"
}
