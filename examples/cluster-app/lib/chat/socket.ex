defmodule Chat.Socket do
  @moduledoc """
  One WebSocket connection (RFC 6455), run by the process that read the
  HTTP request (`GET /socket/websocket`, see `Chat.HTTP`).

  The upgrade needs `Upgrade: websocket`, `Connection: Upgrade` (tokens,
  any case), a `Sec-WebSocket-Key` of 16 bytes in base64 and
  `Sec-WebSocket-Version: 13`; otherwise the answer is 400. No subprotocol
  or extension is negotiated.

  Right after `101 Switching Protocols` the server sends one text frame
  `welcome <node> <commit>`. From then on every text message sent by any
  client on any node of the cluster, this one's included, arrives as one
  text frame (`Chat.Broadcast`).

    * text, in one frame or fragmented with continuations, up to 64 KiB:
      broadcast; larger: close 1009; not UTF-8: close 1007
    * ping: answered with a pong of the same payload; pong: ignored
    * close: answered with a close of the same status, then TCP is closed
    * binary: close 1003; unmasked, reserved bits or opcodes, a control
      frame over 125 bytes or fragmented, a broken fragment sequence: close 1002
    * the node stopping (`Chat.Broadcast` sends `:going_away`): close 1001

  Frames from the server are never masked nor fragmented. A socket has no
  idle timeout: a quiet one stays open as long as its TCP connection.
  """
  import Bitwise

  @guid "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
  @max_message 65_536
  # After a close frame: how long to read what the client still sends (its
  # own close frame) before closing TCP. See close/2.
  @linger 1_000

  @continuation 0x0
  @text 0x1
  @binary 0x2
  @close 0x8
  @ping 0x9
  @pong 0xA

  @doc """
  Upgrades the HTTP connection `socket` (request head read, `packet:
  :http_bin`) and serves the WebSocket until it closes; returns `:ok`
  then. `{:error, :bad_request}` when the request is not a valid upgrade,
  `{:error, :unavailable}` when the node is stopping: nothing was sent.
  """
  def upgrade(socket, vsn, headers) do
    with {:ok, accept} <- handshake(vsn, headers),
         # Registered before the 101: no message sent after the welcome is lost.
         :ok <- Chat.Broadcast.register(socket) do
      response = [
        "HTTP/1.1 101 Switching Protocols\r\n",
        "upgrade: websocket\r\n",
        "connection: Upgrade\r\n",
        "sec-websocket-accept: #{accept}\r\n\r\n",
        frame(@text, "welcome #{node()} #{Chat.commit()}")
      ]

      with :ok <- :inet.setopts(socket, packet: :raw, active: :once),
           :ok <- :gen_tcp.send(socket, response) do
        loop(%{socket: socket, buffer: <<>>, message: nil})
      end

      :ok
    end
  end

  @doc false
  # The Sec-WebSocket-Accept for a valid upgrade request.
  def handshake(vsn, headers) do
    key = headers |> Map.get("sec-websocket-key", "") |> String.trim()

    valid =
      vsn >= {1, 1} and
        token?(headers, "upgrade", "websocket") and
        token?(headers, "connection", "upgrade") and
        String.trim(Map.get(headers, "sec-websocket-version", "")) == "13" and
        match?({:ok, <<_::binary-size(16)>>}, Base.decode64(key))

    if valid,
      do: {:ok, Base.encode64(sha1(key <> @guid))},
      else: {:error, :bad_request}
  end

  defp token?(headers, name, token) do
    headers
    |> Map.get(name, "")
    |> String.split(",")
    |> Enum.any?(&(&1 |> String.trim() |> String.downcase() == token))
  end

  defp loop(%{socket: socket} = state) do
    receive do
      {:tcp, ^socket, data} ->
        case frames(%{state | buffer: state.buffer <> data}) do
          {:ok, state} ->
            case :inet.setopts(socket, active: :once) do
              :ok -> loop(state)
              {:error, _closed} -> :gen_tcp.close(socket)
            end

          {:close, payload} ->
            close(socket, payload)
        end

      {:broadcast, payload} ->
        case :gen_tcp.send(socket, frame(@text, payload)) do
          :ok -> loop(state)
          {:error, _} -> :gen_tcp.close(socket)
        end

      :going_away ->
        close(socket, <<1001::16>>)

      {:tcp_closed, ^socket} ->
        :ok

      {:tcp_error, ^socket, _reason} ->
        :gen_tcp.close(socket)
    end
  end

  # Handles every complete frame in the buffer, keeping the rest (at most
  # one frame of at most 64 KiB, as bigger ones are refused by their header).
  # {:close, payload}: send a close frame with that payload, and stop.
  defp frames(state) do
    case decode(state.buffer) do
      :more ->
        {:ok, state}

      {:error, status} ->
        {:close, <<status::16>>}

      {:ok, fin, opcode, payload, rest} ->
        case handle(fin, opcode, payload, %{state | buffer: rest}) do
          {:ok, state} -> frames(state)
          close -> close
        end
    end
  end

  defp handle(fin, @text, payload, %{message: nil} = state),
    do: text(fin, [payload], byte_size(payload), state)

  defp handle(fin, @continuation, payload, %{message: {parts, size}} = state),
    do: text(fin, [payload | parts], size + byte_size(payload), state)

  defp handle(_fin, @binary, _payload, _state), do: {:close, <<1003::16>>}

  defp handle(_fin, @ping, payload, state) do
    case :gen_tcp.send(state.socket, frame(@pong, payload)) do
      :ok -> {:ok, state}
      {:error, _} -> {:close, <<>>}
    end
  end

  defp handle(_fin, @pong, _payload, state), do: {:ok, state}

  defp handle(_fin, @close, <<>>, _state), do: {:close, <<>>}

  defp handle(_fin, @close, <<status::16, _reason::binary>>, _state)
       when status in 1000..1003 or status in 1007..1014 or status in 3000..4999,
       do: {:close, <<status::16>>}

  defp handle(_fin, @close, _payload, _state), do: {:close, <<1002::16>>}

  # A text frame while a fragmented message is open, a continuation with
  # none open, a reserved opcode.
  defp handle(_fin, _opcode, _payload, _state), do: {:close, <<1002::16>>}

  defp text(_fin, _parts, size, _state) when size > @max_message, do: {:close, <<1009::16>>}
  defp text(0, parts, size, state), do: {:ok, %{state | message: {parts, size}}}

  defp text(1, parts, _size, state) do
    message = parts |> Enum.reverse() |> IO.iodata_to_binary()

    # Browsers drop a connection that sends them invalid UTF-8 as text:
    # refuse it here rather than broadcast it to every client.
    if String.valid?(message) do
      Chat.Broadcast.publish(message)
      {:ok, %{state | message: nil}}
    else
      {:close, <<1007::16>>}
    end
  end

  # Sends the close frame, then closes TCP. Half-close first and read what
  # the client still sends (its close frame, messages in flight) until it
  # closes too or @linger passes: closing a socket with unread input makes
  # the kernel send a reset, which can discard the close frame before the
  # client has read it.
  defp close(socket, payload) do
    _ = :gen_tcp.send(socket, frame(@close, payload))
    _ = :gen_tcp.shutdown(socket, :write)
    _ = :inet.setopts(socket, active: false)
    discard(socket, System.monotonic_time(:millisecond) + @linger)
    :gen_tcp.close(socket)
  end

  defp discard(socket, deadline) do
    case :gen_tcp.recv(socket, 0, max(deadline - System.monotonic_time(:millisecond), 0)) do
      {:ok, _data} -> discard(socket, deadline)
      {:error, _closed_or_timeout} -> :ok
    end
  end

  @doc false
  # One client frame from the start of the buffer:
  # {:ok, fin, opcode, unmasked payload, rest}, :more (incomplete), or
  # {:error, close status}. A payload over 64 KiB is refused from its header,
  # before its bytes arrive.
  def decode(<<_fin::1, rsv::3, _::bits>>) when rsv != 0, do: {:error, 1002}
  def decode(<<_::8, 0::1, _::bits>>), do: {:error, 1002}

  def decode(<<fin::1, 0::3, op::4, 1::1, 126::7, len::16, rest::binary>>),
    do: payload(fin, op, len, rest)

  def decode(<<fin::1, 0::3, op::4, 1::1, 127::7, len::64, rest::binary>>),
    do: payload(fin, op, len, rest)

  def decode(<<_::9, len::7, _::binary>>) when len >= 126, do: :more
  def decode(<<fin::1, 0::3, op::4, 1::1, len::7, rest::binary>>), do: payload(fin, op, len, rest)
  def decode(_short), do: :more

  defp payload(fin, op, len, _rest) when op >= 8 and (len > 125 or fin == 0), do: {:error, 1002}
  defp payload(_fin, _op, len, _rest) when len > @max_message, do: {:error, 1009}

  defp payload(fin, op, len, rest) do
    case rest do
      <<key::32, masked::binary-size(len), rest::binary>> ->
        {:ok, fin, op, unmask(masked, key, <<>>), rest}

      _ ->
        :more
    end
  end

  defp unmask(<<word::32, rest::binary>>, key, acc),
    do: unmask(rest, key, <<acc::binary, bxor(word, key)::32>>)

  defp unmask(<<word::24>>, key, acc), do: <<acc::binary, bxor(word, key >>> 8)::24>>
  defp unmask(<<word::16>>, key, acc), do: <<acc::binary, bxor(word, key >>> 16)::16>>
  defp unmask(<<word::8>>, key, acc), do: <<acc::binary, bxor(word, key >>> 24)::8>>
  defp unmask(<<>>, _key, acc), do: acc

  @doc false
  # A server frame: final, unmasked.
  def frame(opcode, payload) do
    header =
      case byte_size(payload) do
        len when len < 126 -> <<1::1, 0::3, opcode::4, 0::1, len::7>>
        len when len < 65_536 -> <<1::1, 0::3, opcode::4, 0::1, 126::7, len::16>>
        len -> <<1::1, 0::3, opcode::4, 0::1, 127::7, len::64>>
      end

    [header, payload]
  end

  @doc false
  # SHA-1 (FIPS 180-4), for Sec-WebSocket-Accept only: :crypto is not part
  # of the release (mix.exs starts only :logger besides the defaults), and a
  # handshake hashes 60 bytes.
  def sha1(message) do
    bits = bit_size(message)
    pad = rem(512 - rem(bits + 65, 512), 512)
    padded = <<message::binary, 1::1, 0::size(pad), bits::64>>
    init = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}

    {a, b, c, d, e} =
      for <<block::binary-size(64) <- padded>>, reduce: init do
        hash -> sha1_block(block, hash)
      end

    <<a::32, b::32, c::32, d::32, e::32>>
  end

  defp sha1_block(block, {h0, h1, h2, h3, h4}) do
    words =
      Enum.reduce(16..79, List.to_tuple(for(<<w::32 <- block>>, do: w)), fn i, w ->
        x =
          elem(w, i - 3) |> bxor(elem(w, i - 8)) |> bxor(elem(w, i - 14)) |> bxor(elem(w, i - 16))

        Tuple.append(w, rotl(x, 1))
      end)

    {a, b, c, d, e} =
      Enum.reduce(0..79, {h0, h1, h2, h3, h4}, fn i, {a, b, c, d, e} ->
        {f, k} =
          cond do
            i < 20 -> {bor(band(b, c), band(bnot(b), d)), 0x5A827999}
            i < 40 -> {b |> bxor(c) |> bxor(d), 0x6ED9EBA1}
            i < 60 -> {bor(bor(band(b, c), band(b, d)), band(c, d)), 0x8F1BBCDC}
            true -> {b |> bxor(c) |> bxor(d), 0xCA62C1D6}
          end

        {band(rotl(a, 5) + f + e + k + elem(words, i), 0xFFFFFFFF), a, rotl(b, 30), c, d}
      end)

    {band(h0 + a, 0xFFFFFFFF), band(h1 + b, 0xFFFFFFFF), band(h2 + c, 0xFFFFFFFF),
     band(h3 + d, 0xFFFFFFFF), band(h4 + e, 0xFFFFFFFF)}
  end

  defp rotl(x, n), do: band(bor(x <<< n, x >>> (32 - n)), 0xFFFFFFFF)
end
