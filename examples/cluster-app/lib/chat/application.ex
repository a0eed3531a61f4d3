defmodule Chat.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      Chat.Cluster,
      # The database connection /health reads through (none without
      # DATABASE_URL).
      Chat.Repo.Conn,
      # Before Chat.HTTP: children stop in reverse order, so on shutdown the
      # listener closes first, then the hub closes every WebSocket (1001).
      Chat.Broadcast,
      {Chat.HTTP, port: port()}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Chat.Supervisor)
  end

  defp port do
    case Integer.parse(System.get_env("PORT", "4000")) do
      {port, ""} when port in 1..65535 -> port
      _ -> raise ArgumentError, "PORT must be a TCP port number, got: #{System.get_env("PORT")}"
    end
  end
end
