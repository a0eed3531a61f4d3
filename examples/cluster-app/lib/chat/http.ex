defmodule Chat.HTTP do
  @moduledoc """
  A minimal HTTP/1.1 server on `:gen_tcp` (one process per connection,
  `Connection: close`), listening on all interfaces.

    * `GET /health` - 200 with JSON: app, commit, node, nodes, migrated, db
      (with `DATABASE_URL`); 503 when the database cannot be read
    * `GET /` - a small page that loads `/assets/app.js` when it is bundled
    * `GET /assets/app.js` - the esbuild bundle from `priv/static/assets/app.js`
    * `GET /slow?ms=N` - `slow N` after sleeping N ms (0 to 30000): a request
      that is still in flight when a deploy drains the node
    * `GET /socket/websocket` - upgrades to a WebSocket (`Chat.Socket`)

  The request line and headers must arrive within 10 s, one deadline for
  the whole head; at most 100 header lines of at most 8 KiB each, of which
  only the few a route needs are kept. A WebSocket has no timeout of its
  own once upgraded.

  Shutdown: this process traps exits and closes the listening socket in
  `terminate/2`, so the listener has stopped accepting before the supervisor
  goes on to `Chat.Broadcast` (started before this server), which closes
  the WebSockets.
  """
  use GenServer
  require Logger

  @recv_timeout 10_000
  @max_headers 100
  @max_line 8192
  # The request headers any route reads (lowercase); the others are dropped.
  @kept_headers ~w(connection upgrade sec-websocket-key sec-websocket-version)
  @max_slow 30_000

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @impl true
  def init(opts) do
    port = Keyword.fetch!(opts, :port)

    listen_opts = [
      :binary,
      packet: :http_bin,
      packet_size: @max_line,
      active: false,
      reuseaddr: true,
      ip: {0, 0, 0, 0},
      backlog: 1024,
      # A client that stops reading (a WebSocket under broadcast) blocks its
      # own process only, and for 30 s at most; then its socket is closed.
      send_timeout: 30_000,
      send_timeout_close: true
    ]

    case :gen_tcp.listen(port, listen_opts) do
      {:ok, listen} ->
        # The listening socket stays owned by this process, so terminate/2
        # can close it; the acceptor only calls accept on it.
        Process.flag(:trap_exit, true)
        acceptor = spawn_link(fn -> accept_loop(listen) end)
        Logger.info("chat: http listening on port #{port}")
        {:ok, %{listen: listen, port: port, acceptor: acceptor}}

      {:error, reason} ->
        {:stop, {:listen, port, reason}}
    end
  end

  @impl true
  def handle_info({:EXIT, acceptor, reason}, %{acceptor: acceptor} = state) do
    {:stop, {:acceptor, reason}, state}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    :gen_tcp.close(state.listen)
  end

  defp accept_loop(listen) do
    case :gen_tcp.accept(listen) do
      {:ok, socket} ->
        pid = spawn(fn -> receive(do: (:go -> serve(socket))) end)

        case :gen_tcp.controlling_process(socket, pid) do
          :ok ->
            send(pid, :go)

          _ ->
            :gen_tcp.close(socket)
            Process.exit(pid, :kill)
        end

        accept_loop(listen)

      # Out of file descriptors or ports: the connections already open are
      # fine, so wait for some to close rather than crash the listener (a
      # few crashes in a row would stop the application).
      {:error, reason} when reason in [:emfile, :enfile, :system_limit] ->
        Logger.warning("chat: accept: #{reason}, retrying in 100 ms")
        Process.sleep(100)
        accept_loop(listen)

      {:error, reason} ->
        exit({:accept, reason})
    end
  end

  defp serve(socket) do
    deadline = System.monotonic_time(:millisecond) + @recv_timeout

    with {:ok, {:http_request, method, {:abs_path, target}, vsn}} <- recv(socket, deadline),
         {:ok, headers} <- read_headers(socket, deadline, %{}, 0) do
      {path, query} =
        case String.split(target, "?", parts: 2) do
          [path, query] -> {path, query}
          [path] -> {path, ""}
        end

      respond(socket, method, path, query, vsn, headers)
    else
      {:ok, _bad_request_line} -> :gen_tcp.send(socket, head(400, "text/plain", 0))
      {:error, :too_many_headers} -> :gen_tcp.send(socket, head(400, "text/plain", 0))
      _closed_or_timeout -> :ok
    end

    :gen_tcp.close(socket)
  end

  defp recv(socket, deadline) do
    :gen_tcp.recv(socket, 0, max(deadline - System.monotonic_time(:millisecond), 0))
  end

  # Headers named in @kept_headers, by lowercase name; a repeated one is
  # joined with ", " (as HTTP allows for lists such as Connection).
  defp read_headers(_socket, _deadline, _headers, count) when count > @max_headers,
    do: {:error, :too_many_headers}

  defp read_headers(socket, deadline, headers, count) do
    case recv(socket, deadline) do
      {:ok, :http_eoh} ->
        {:ok, headers}

      {:ok, {:http_header, _, _, name, value}} ->
        name = String.downcase(name)

        headers =
          if name in @kept_headers,
            do: Map.update(headers, name, value, &(&1 <> ", " <> value)),
            else: headers

        read_headers(socket, deadline, headers, count + 1)

      {:ok, {:http_error, _}} ->
        read_headers(socket, deadline, headers, count + 1)

      other ->
        other
    end
  end

  defp respond(socket, :GET, "/socket/websocket", _query, vsn, headers) do
    # On success the connection is a WebSocket until it closes.
    case Chat.Socket.upgrade(socket, vsn, headers) do
      :ok ->
        :ok

      {:error, :bad_request} ->
        reply(socket, :GET, {400, "text/plain", "bad websocket upgrade request\n"})

      {:error, :unavailable} ->
        reply(socket, :GET, {503, "text/plain", "shutting down\n"})
    end
  end

  defp respond(socket, method, path, query, _vsn, _headers) do
    # HEAD gets the headers a GET would get, without the body.
    reply(socket, method, route(if(method == :HEAD, do: :GET, else: method), path, query))
  end

  defp reply(socket, method, {status, type, body}) do
    :gen_tcp.send(socket, [
      head(status, type, byte_size(body)),
      if(method == :HEAD, do: "", else: body)
    ])
  end

  # 503 when the app cannot read its database: HAProxy's checks and the
  # deploy's health check then count the node out.
  defp route(:GET, "/health", _query) do
    case Chat.health() do
      {:error, fields} -> {503, "application/json", json(fields) <> "\n"}
      fields -> {200, "application/json", json(fields) <> "\n"}
    end
  end

  defp route(:GET, "/", _query) do
    {200, "text/html; charset=utf-8", index()}
  end

  defp route(:GET, "/assets/app.js", _query) do
    case File.read(bundle_path()) do
      {:ok, js} ->
        {200, "application/javascript", js}

      {:error, _} ->
        {404, "text/plain", "assets not bundled (run: npm run deploy --prefix assets)\n"}
    end
  end

  defp route(:GET, "/slow", query) do
    case slow_ms(query) do
      {:ok, ms} ->
        Process.sleep(ms)
        {200, "text/plain", "slow #{ms}\n"}

      :error ->
        {400, "text/plain", "slow: ms must be an integer from 0 to #{@max_slow}\n"}
    end
  end

  # Only HEAD gets here (a GET is an upgrade): there is nothing to upgrade.
  defp route(:GET, "/socket/websocket", _query) do
    {400, "text/plain", "bad websocket upgrade request\n"}
  end

  defp route(:GET, _path, _query), do: {404, "text/plain", "not found\n"}
  defp route(_method, _path, _query), do: {405, "text/plain", "method not allowed\n"}

  # The ms parameter of a query string: decimal digits only, so nothing
  # needs decoding.
  defp slow_ms(query) do
    param = query |> String.split("&") |> Enum.find("", &String.starts_with?(&1, "ms="))

    with "ms=" <> digits <- param,
         true <- digits =~ ~r/\A[0-9]{1,9}\z/,
         ms when ms <= @max_slow <- String.to_integer(digits) do
      {:ok, ms}
    else
      _ -> :error
    end
  end

  defp bundle_path, do: Application.app_dir(:chat, "priv/static/assets/app.js")

  defp index do
    script =
      if File.regular?(bundle_path()),
        do: ~s(<script src="/assets/app.js"></script>),
        else: "<p>assets: not bundled</p>"

    """
    <!doctype html>
    <html><head><meta charset="utf-8"><title>chat</title></head>
    <body>
    <h1>chat</h1>
    <p>node #{html(Atom.to_string(node()))}, commit #{html(Chat.commit())}</p>
    <pre id="health"></pre>
    #{script}
    </body></html>
    """
  end

  defp head(status, type, length) do
    [
      "HTTP/1.1 #{status} #{reason(status)}\r\n",
      "content-type: #{type}\r\n",
      "content-length: #{length}\r\n",
      "cache-control: no-store\r\n",
      "connection: close\r\n\r\n"
    ]
  end

  defp reason(200), do: "OK"
  defp reason(400), do: "Bad Request"
  defp reason(404), do: "Not Found"
  defp reason(405), do: "Method Not Allowed"
  defp reason(503), do: "Service Unavailable"

  defp html(s) do
    s
    |> String.replace("&", "&amp;")
    |> String.replace("<", "&lt;")
    |> String.replace(">", "&gt;")
  end

  @doc false
  # Hand-written JSON (no deps): keyword lists and maps become objects (a
  # keyword list keeps its order), other lists arrays; strings, atoms,
  # numbers, booleans and nil as usual. Enough for /health.
  def json(nil), do: "null"
  def json(true), do: "true"
  def json(false), do: "false"
  def json(n) when is_integer(n) or is_float(n), do: to_string(n)
  def json(a) when is_atom(a), do: json(Atom.to_string(a))
  def json([{key, _} | _] = pairs) when is_atom(key), do: object(pairs)
  def json(list) when is_list(list), do: "[" <> Enum.map_join(list, ",", &json/1) <> "]"
  def json(map) when is_map(map), do: map |> Enum.sort() |> object()

  def json(s) when is_binary(s), do: [?", escape(s, []), ?"] |> IO.iodata_to_binary()

  defp object(pairs) do
    "{" <> Enum.map_join(pairs, ",", fn {k, v} -> json(to_string(k)) <> ":" <> json(v) end) <> "}"
  end

  defp escape(<<>>, acc), do: Enum.reverse(acc)
  defp escape(<<?", rest::binary>>, acc), do: escape(rest, ["\\\"" | acc])
  defp escape(<<?\\, rest::binary>>, acc), do: escape(rest, ["\\\\" | acc])
  defp escape(<<?\n, rest::binary>>, acc), do: escape(rest, ["\\n" | acc])
  defp escape(<<?\r, rest::binary>>, acc), do: escape(rest, ["\\r" | acc])
  defp escape(<<?\t, rest::binary>>, acc), do: escape(rest, ["\\t" | acc])

  defp escape(<<c, rest::binary>>, acc) when c < 0x20,
    do: escape(rest, [:io_lib.format("\\u~4.16.0B", [c]) | acc])

  defp escape(<<c, rest::binary>>, acc), do: escape(rest, [c | acc])
end
