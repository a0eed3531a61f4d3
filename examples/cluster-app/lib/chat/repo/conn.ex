defmodule Chat.Repo.Conn do
  @moduledoc """
  One database connection kept open for the running app's own queries
  (`/health`), as a Phoenix app's Ecto pool keeps its connections: a new
  connection costs a TCP connect and a SCRAM-SHA-256 login (PBKDF2 on both
  sides, about 10 ms of CPU), which no request should pay, least of all
  one of the health checks HAProxy sends every second.

  Queries run one at a time, in the order they come. A query that fails
  drops the connection; one that fails on a connection kept from before
  (the server restarted, say) is tried once more on a new one. Without
  `DATABASE_URL` it holds nothing and answers `:none`. Migrations do not
  come here: `bin/chat eval` runs them without starting the app.
  """
  use GenServer

  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc """
  Runs `sql` on the kept connection (opened if need be), within `timeout`
  ms for the connect and as much for the query: `{:ok, rows}`,
  `{:error, reason}` or `:none` (see `Chat.Repo`).
  """
  def query(sql, timeout) do
    GenServer.call(__MODULE__, {:query, sql, timeout}, 2 * timeout + 1_000)
  catch
    :exit, _ -> {:error, "no answer within #{2 * timeout} ms"}
  end

  @impl true
  def init(nil) do
    # The connection process is not linked (Chat.Repo.connect/2): close it
    # in terminate/2 when this process stops with the app.
    Process.flag(:trap_exit, true)
    {:ok, nil}
  end

  @impl true
  def handle_call({:query, sql, timeout}, _from, conn) do
    case Chat.Repo.config() do
      {:ok, config} ->
        {reply, conn} = run(conn, config, sql, timeout, conn != nil)
        {:reply, reply, conn}

      other ->
        {:reply, other, drop(conn)}
    end
  end

  @impl true
  def handle_info(_msg, conn), do: {:noreply, conn}

  @impl true
  def terminate(_reason, conn), do: drop(conn)

  defp run(nil, config, sql, timeout, _retry) do
    case Chat.Repo.connect(config, timeout) do
      {:ok, conn} -> run(conn, config, sql, timeout, false)
      {:error, _} = error -> {error, nil}
    end
  end

  defp run(conn, config, sql, timeout, retry) do
    case Chat.Repo.query_on(conn, sql, timeout: timeout) do
      {:ok, rows} ->
        {{:ok, rows}, conn}

      {:error, _} = error ->
        drop(conn)
        if retry, do: run(nil, config, sql, timeout, false), else: {error, nil}
    end
  end

  defp drop(nil), do: nil

  defp drop(conn) do
    Chat.Repo.disconnect(conn)
    nil
  end
end
