defmodule Chat.HTTP do
  @moduledoc """
  A minimal HTTP/1.1 server on `:gen_tcp` (one process per connection,
  `Connection: close`), listening on all interfaces.

    * `GET /health` - 200 with JSON: app, commit, node, nodes, migrated
    * `GET /` - a small page that loads `/assets/app.js` when it is bundled
    * `GET /assets/app.js` - the esbuild bundle from `priv/static/assets/app.js`
  """
  use GenServer
  require Logger

  @recv_timeout 10_000

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @impl true
  def init(opts) do
    port = Keyword.fetch!(opts, :port)

    listen_opts = [
      :binary,
      packet: :http_bin,
      active: false,
      reuseaddr: true,
      ip: {0, 0, 0, 0},
      backlog: 128
    ]

    case :gen_tcp.listen(port, listen_opts) do
      {:ok, listen} ->
        acceptor = spawn_link(fn -> accept_loop(listen) end)
        :ok = :gen_tcp.controlling_process(listen, acceptor)
        Logger.info("chat: http listening on port #{port}")
        {:ok, %{listen: listen, port: port, acceptor: acceptor}}

      {:error, reason} ->
        {:stop, {:listen, port, reason}}
    end
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

      {:error, reason} ->
        exit({:accept, reason})
    end
  end

  defp serve(socket) do
    with {:ok, {:http_request, method, {:abs_path, target}, _vsn}} <-
           :gen_tcp.recv(socket, 0, @recv_timeout),
         :ok <- skip_headers(socket) do
      path = target |> String.split("?", parts: 2) |> hd()
      # HEAD gets the headers a GET would get, without the body.
      {status, type, body} = route(if(method == :HEAD, do: :GET, else: method), path)

      :gen_tcp.send(socket, [
        head(status, type, byte_size(body)),
        if(method == :HEAD, do: "", else: body)
      ])
    else
      {:ok, _bad_request} -> :gen_tcp.send(socket, head(400, "text/plain", 0))
      _closed_or_timeout -> :ok
    end

    :gen_tcp.close(socket)
  end

  defp skip_headers(socket) do
    case :gen_tcp.recv(socket, 0, @recv_timeout) do
      {:ok, :http_eoh} -> :ok
      {:ok, {:http_header, _, _, _, _}} -> skip_headers(socket)
      {:ok, {:http_error, _}} -> skip_headers(socket)
      other -> other
    end
  end

  defp route(:GET, "/health") do
    {200, "application/json", json(Chat.health()) <> "\n"}
  end

  defp route(:GET, "/") do
    {200, "text/html; charset=utf-8", index()}
  end

  defp route(:GET, "/assets/app.js") do
    case File.read(bundle_path()) do
      {:ok, js} ->
        {200, "application/javascript", js}

      {:error, _} ->
        {404, "text/plain", "assets not bundled (run: npm run deploy --prefix assets)\n"}
    end
  end

  defp route(:GET, _path), do: {404, "text/plain", "not found\n"}
  defp route(_method, _path), do: {405, "text/plain", "method not allowed\n"}

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
