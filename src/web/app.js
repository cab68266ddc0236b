// The browser client (issue 5) is not built yet.
document.getElementById("status").textContent = "The web client is not available in this build yet; use the REST and WebSocket API.";
