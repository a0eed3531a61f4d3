defmodule Chat.Repo do
  @moduledoc """
  The app's PostgreSQL database, through Debian's pure-Erlang driver
  `p1_pgsql` (package `erlang-p1-pgsql`; modules `:pgsql`, `:pgsql_proto`):
  no hex dependencies.

  Configured like a Phoenix app, from the environment: `DATABASE_URL` is
  `postgres://user:password@host:port/database` (user and password
  percent-encoded, port 5432 by default). It is read on every call, so
  `bin/chat eval` sees it without booting the app, and without it there is
  no database (`config/0` returns `:none`).

  `query/2` and `transaction/2` open a connection for the call and close it
  after (what `migrate` needs, run by `bin/chat eval` without the app);
  the running app reads through the one connection `Chat.Repo.Conn` keeps,
  since a connection costs a TCP connect and a SCRAM-SHA-256 login. Every
  step has a deadline: the connect (`:connect_timeout`) and each statement
  (`:timeout`).

  Results: `{:ok, rows}` with each row a list of column values as strings
  (`nil` for NULL) for the last statement that returned rows, or
  `{:error, reason}` with `reason` a one-line string that never holds the
  password.
  """

  @connect_timeout 3_000
  @timeout 5_000

  @typedoc "A connection: the driver's `pgsql_proto` process."
  @type conn :: pid()

  @doc """
  The database settings from `DATABASE_URL`: `{:ok, config}`, `:none` when
  it is unset or empty, `{:error, reason}` when it does not parse (the
  reason never quotes the URL, which holds the password).
  """
  def config do
    case System.get_env("DATABASE_URL", "") do
      "" -> :none
      url -> parse_url(url)
    end
  end

  @doc "Whether `DATABASE_URL` names a database."
  def configured?, do: config() != :none

  @doc false
  def parse_url(url) do
    with %URI{scheme: scheme, userinfo: info, host: host, port: port, path: "/" <> db}
         when scheme in ["postgres", "postgresql", "ecto"] and is_binary(info) and
                host not in [nil, ""] and db != "" <- URI.parse(url),
         [user, password] <- String.split(info, ":", parts: 2) do
      {:ok,
       %{
         host: host,
         port: port || 5432,
         database: URI.decode(db),
         user: URI.decode(user),
         password: URI.decode(password)
       }}
    else
      _ -> {:error, "DATABASE_URL is not postgres://user:password@host:port/database"}
    end
  end

  @doc "Where the database is, for messages: `database@host:port` (no user, no password)."
  def describe(%{host: host, port: port, database: db}), do: "#{db}@#{host}:#{port}"

  @doc """
  Runs `sql` (one or more statements) on a connection of its own and returns
  the rows of the last statement that returned rows.
  """
  def query(sql, opts \\ []) do
    with_connection(&query_on(&1, sql, opts), opts)
  end

  @doc """
  Runs `statements` (each a string of one or more statements) in one
  transaction on a connection of its own: all of them or none.
  """
  def transaction(statements, opts \\ []) do
    with_connection(&transaction_on(&1, statements, opts), opts)
  end

  @doc """
  Connects with the `DATABASE_URL` settings (or `opts[:config]`), runs
  `fun.(conn)` and closes the connection whatever happens. Returns what
  `fun` returns, or `{:error, reason}` when there is no database or the
  connect fails.
  """
  def with_connection(fun, opts \\ []) do
    config =
      case Keyword.fetch(opts, :config) do
        {:ok, config} -> {:ok, config}
        :error -> config()
      end

    case config do
      {:ok, config} ->
        with {:ok, conn} <- connect(config, Keyword.get(opts, :connect_timeout, @connect_timeout)) do
          try do
            fun.(conn)
          after
            disconnect(conn)
          end
        end

      :none ->
        {:error, "DATABASE_URL is not set"}

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Opens a connection. The driver's `pgsql:connect/1` has no deadline of its
  own beyond the TCP connect (each message of the login can take 5 s), so
  its `gen_server` is started here with one: past it the half-open
  connection is killed. The process is not linked to the caller: call
  `disconnect/1` (`with_connection/2` does).
  """
  def connect(config, timeout \\ @connect_timeout) do
    opts = [
      host: config.host,
      port: config.port,
      database: config.database,
      user: config.user,
      password: config.password,
      as_binary: true,
      connect_timeout: timeout
    ]

    # pgsql:connect(Opts) is gen_server:start(pgsql_proto, [self(), Opts], []).
    case :gen_server.start(:pgsql_proto, [self(), opts], timeout: timeout) do
      {:ok, conn} ->
        forget_password(conn)
        {:ok, conn}

      {:error, reason} ->
        {:error, "connect to #{describe(config)}: #{connect_error(reason)}"}
    end
  end

  # The driver keeps its options, password included, in its state for the
  # life of the connection, and gen_server prints the state when the
  # process crashes (a socket closed under a query, for one): replace the
  # password, used only at login, so that no crash report can show it.
  defp forget_password(conn) do
    :sys.replace_state(conn, fn
      state when is_tuple(state) and tuple_size(state) > 1 and elem(state, 0) == :state ->
        case elem(state, 1) do
          opts when is_list(opts) -> put_elem(state, 1, Keyword.put(opts, :password, ""))
          _ -> state
        end

      state ->
        state
    end)
  catch
    :exit, _ -> :ok
  end

  @doc "Closes a connection (politely if it answers, else by killing it and its socket's process)."
  def disconnect(conn) do
    # The driver's socket reader is linked to the connection but outlives a
    # normal stop: kill it too, or each connection leaves a process behind.
    links =
      case Process.info(conn, :links) do
        {:links, links} -> links
        nil -> []
      end

    try do
      :pgsql.terminate(conn)
    catch
      :exit, _ -> :ok
    end

    Enum.each([conn | links], &Process.exit(&1, :kill))
    :ok
  end

  @doc "Runs `sql` on `conn`; see the module doc for the result."
  def query_on(conn, sql, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, @timeout)

    case squery(conn, sql, timeout) do
      {:ok, results} ->
        case Enum.find(results, &match?({:error, _}, &1)) do
          {:error, error} ->
            {:error, sql_error(error)}

          nil ->
            rows = for {_command, _cols, rows} <- results, do: rows
            {:ok, List.last(rows) || []}
        end

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Runs `statements` on `conn` between `BEGIN` and `COMMIT`. On the first
  error it rolls back and returns `{:error, {index, reason}}` (index from 0).
  """
  def transaction_on(conn, statements, opts \\ []) do
    with {:ok, _} <- query_on(conn, "BEGIN", opts) do
      result =
        statements
        |> Enum.with_index()
        |> Enum.reduce_while(:ok, fn {sql, i}, :ok ->
          case query_on(conn, sql, opts) do
            {:ok, _} -> {:cont, :ok}
            {:error, reason} -> {:halt, {:error, {i, reason}}}
          end
        end)

      case result do
        :ok ->
          with {:ok, _} <- query_on(conn, "COMMIT", opts), do: :ok

        {:error, _} = error ->
          # The driver already sent a ROLLBACK after the failed statement;
          # this one is for a statement that timed out (and a no-op warning
          # otherwise).
          query_on(conn, "ROLLBACK", opts)
          error
      end
    end
  end

  defp squery(conn, sql, timeout) do
    :pgsql.squery(conn, sql, timeout)
  catch
    # A timeout, or the connection died (the server went away): the
    # connection is unusable either way.
    :exit, {:timeout, _} ->
      Process.exit(conn, :kill)
      {:error, "no answer within #{timeout} ms"}

    :exit, _ ->
      {:error, "connection lost"}
  end

  defp sql_error(fields) do
    severity = fields[:severity] || "ERROR"
    code = fields[:code]
    message = fields[:message] || "unknown error"
    "#{severity} #{code}: #{message}" |> String.replace("\n", " ")
  end

  defp connect_error({:authentication, [{_, _} | _] = fields}),
    do: "authentication: " <> sql_error(fields)

  defp connect_error({:error_response, [{_, _} | _] = fields}), do: sql_error(fields)
  defp connect_error({:init, {:error, reason}}), do: :inet.format_error(reason) |> to_string()

  defp connect_error({:authentication, why}) when is_binary(why) or is_list(why),
    do: "authentication: #{why}"

  defp connect_error(:timeout), do: "no answer"
  defp connect_error(_other), do: "protocol error"
end

# p1_pgsql's SCRAM-SHA-256 client (pgsql_sasl) calls a module scram that
# Debian ships in p1_xmpp, together with an XMPP library, its NIFs and a
# stringprep of the password. That is 3 MB the release would carry for six
# HMACs, and p1_pgsql's .app does not even name it: :scram below is those
# functions, on :crypto. The password is used as given (no SASLprep), which
# is the same for ASCII passwords.
#
# On the build host p1_xmpp's scram is on the compiler's code path (the
# package came with erlang-p1-pgsql), and Elixir warns that this module
# redefines it; it does so on purpose, and in the release, whose code path
# holds only its own lib/, it is the only scram. So that one warning is off
# for this module alone.
ignore_module_conflict = Code.get_compiler_option(:ignore_module_conflict)
Code.put_compiler_option(:ignore_module_conflict, true)

defmodule :scram do
  @moduledoc false

  def salted_password(hash, password, salt, iterations),
    do: :crypto.pbkdf2_hmac(hash, password, salt, iterations, byte_size(:crypto.hash(hash, "")))

  def client_key(hash, salted_password),
    do: :crypto.mac(:hmac, hash, salted_password, "Client Key")

  def server_key(hash, salted_password),
    do: :crypto.mac(:hmac, hash, salted_password, "Server Key")

  def stored_key(hash, client_key), do: :crypto.hash(hash, client_key)
  def client_signature(hash, stored_key, auth), do: :crypto.mac(:hmac, hash, stored_key, auth)
  def server_signature(hash, server_key, auth), do: :crypto.mac(:hmac, hash, server_key, auth)
  def client_key_xor(key, signature), do: :crypto.exor(key, signature)
end

Code.put_compiler_option(:ignore_module_conflict, ignore_module_conflict)
