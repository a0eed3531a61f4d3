defmodule Chat.MixProject do
  use Mix.Project

  # Constant on purpose: the release tarball is always _build/prod/chat-0.1.0.tar.gz,
  # so the manifest's artifact glob (_build/prod/chat-*.tar.gz) matches exactly one file.
  # Which code a release runs is told by its commit (priv/REVISION), not by this version.
  @version "0.1.0"

  def project do
    [
      app: :chat,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [],
      releases: [
        chat: [
          version: @version,
          include_executables_for: [:unix],
          steps: [:assemble, &write_revision/1, &remove_cookie/1, :tar]
        ]
      ]
    ]
  end

  def application do
    [
      # p1_pgsql: Debian's PostgreSQL driver (erlang-p1-pgsql), found in the
      # Erlang lib dir like an OTP app, so the release carries it in lib/;
      # :crypto for its SCRAM-SHA-256 login (Chat.Repo).
      extra_applications: [:logger, :crypto, :p1_pgsql],
      mod: {Chat.Application, []}
    ]
  end

  # Release step: record the commit the release is built from in
  # lib/chat-<vsn>/priv/REVISION (read at runtime by Chat.commit/0).
  # It runs on every `mix release`, so it never depends on what Mix
  # decided to recompile. The operator sets OPERATOR_COMMIT for build steps.
  defp write_revision(release) do
    commit =
      case System.get_env("OPERATOR_COMMIT", "") |> String.trim() do
        "" -> git_head() || "unknown"
        sha -> sha
      end

    priv = Path.join([release.path, "lib", "chat-#{@version}", "priv"])
    File.mkdir_p!(priv)
    File.write!(Path.join(priv, "REVISION"), commit <> "\n")
    release
  end

  defp git_head do
    case System.cmd("git", ["rev-parse", "HEAD"], stderr_to_stdout: true) do
      {sha, 0} -> String.trim(sha)
      _ -> nil
    end
  rescue
    _ -> nil
  end

  # Release step: the cookie never ships in the tarball. Mix writes a random
  # releases/COOKIE at assembly; delete it before :tar (which packs every file
  # in releases/). On a node, releases/COOKIE is a symlink to
  # <deploy_to>/shared/releases/COOKIE (manifest release.links), or the
  # environment sets RELEASE_COOKIE.
  defp remove_cookie(release) do
    File.rm(Path.join([release.path, "releases", "COOKIE"]))
    release
  end
end
