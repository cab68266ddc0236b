// Every string the page shows, in English and Russian, and the language switch.
// The language comes from the user's choice (kept in localStorage), else from
// navigator.languages (Russian for any "ru…"), else English.
// Static text in index.html names its key in data-i18n (textContent), data-i18n-label
// (aria-label) or data-i18n-placeholder; dynamic text is set with say(), which remembers the
// key so a language switch re-renders it.

const LANG_KEY = "callsignal.lang";
export const LANGS = ["en", "ru"];

/** Russian needs one/few/many forms; English one/other. Intl.PluralRules picks the category. */
function plural(lang, n, forms) {
  const cat = new Intl.PluralRules(lang).select(n);
  return (forms[cat] || forms.other).replace("{n}", String(n));
}

const EN = {
  "lang.switch": "Русский",
  "lang.switch_label": "Переключить язык на русский",
  "link.online": "online",
  "link.reconnecting": "reconnecting",
  "link.offline": "offline",
  "notice.insecure_context": "This page is not served over HTTPS, so your browser will not let it use the microphone or encrypt the call. Open it with https:// — or ask whoever runs this server to enable HTTPS.",
  "account.label": "Account",
  "account.logout": "Log out",
  "title.base": "callsignal",
  "title.ringing": "Call from {peer}",
  "title.calling": "Calling {peer}…",
  "title.incall": "In call with {peer}",

  "auth.title": "Private audio calls",
  "auth.lead": "End-to-end encrypted between browsers. The server never hears you.",
  "auth.username": "Username",
  "auth.password": "Password",
  "auth.hint": "At least 8 characters. Common passwords are refused.",
  "auth.login": "Log in",
  "auth.register": "Create account",

  "home.call_title": "Call someone",
  "home.call_to": "Username to call",
  "home.call_placeholder": "username",
  "home.call": "Call",
  "home.history": "Recent calls",
  "home.refresh": "Refresh",
  "home.refresh_history": "Refresh recent calls",
  "home.refresh_sessions": "Refresh signed-in devices",
  "home.sessions": "Signed-in devices",
  "home.no_calls": "No calls yet.",
  "home.end_elsewhere": "End that call",
  "home.elsewhere": "You are in a call with {peer} in another window or on another device.",

  "notify.ask": "Get a notification when someone calls while this tab is in the background?",
  "notify.on": "Turn on notifications",
  "notify.later": "Not now",
  "notify.denied": "Notifications are blocked for this site. Incoming calls still ring while this tab is open.",
  "notify.title": "Incoming call",
  "notify.body": "{peer} is calling you",

  "sessions.this": "This device",
  "sessions.unknown": "Unknown device",
  "sessions.device": "{browser} on {os}",
  "sessions.browser_only": "{browser}",
  "sessions.os_only": "Browser on {os}",
  "sessions.signed_in": "Signed in {when}",
  "sessions.last": "last active {when}",
  "sessions.from": "from {ip}",
  "sessions.sign_out": "Sign out",
  "sessions.sign_out_label": "Sign out {device}, signed in {when}",
  "sessions.sign_out_others": "Sign out all other devices",
  "sessions.signed_out_others": {
    one: "Signed out {n} other device.",
    other: "Signed out {n} other devices.",
  },
  "sessions.none_other": "No other device is signed in.",

  "out.calling": "Calling…",
  "out.ringing": "Ringing…",
  "out.mic": "Waiting for the microphone…",
  "out.cancel": "Cancel",
  "in.label": "Incoming call",
  "in.accept": "Accept",
  "in.decline": "Decline",
  "in.mic": "Starting the microphone…",
  "in.connecting": "Connecting…",
  "in.offline": "Not connected to the server. Try again in a moment.",

  "call.duration": "Call duration",
  "call.peer_reconnecting": "{peer} is reconnecting…",
  "call.you": "You",
  "call.them": "Them",
  "call.mic_level": "Your microphone level",
  "call.their_level": "Their voice level",
  "call.verify": "Verification code",
  "call.verify_hint": "Read it aloud: if the other person sees a different code, someone is intercepting the call.",
  "call.mute": "Mute",
  "call.unmute": "Unmute",
  "call.muted": "Your microphone is off — they cannot hear you.",
  "call.hangup": "Hang up",
  "call.mic": "Microphone",
  "call.mic_default": "Default microphone",
  "call.mic_n": "Microphone {n}",
  "call.mic_failed": "Could not switch to that microphone; the previous one is still in use.",
  "call.quality": "Connection",
  "call.quality_good": "good",
  "call.quality_fair": "fair",
  "call.quality_poor": "poor",
  "call.quality_unknown": "measuring…",
  "call.quality_detail": "round trip {rtt} ms, {loss}% lost",
  "call.quality_warn": "The connection is poor: you may hear each other break up or with a delay. Moving closer to the Wi-Fi router or pausing downloads can help.",

  "phase.connecting": "connecting…",
  "phase.connected": "connected · encrypted",
  "phase.interrupted": "Connection interrupted — reconnecting…",
  "phase.waiting": "Waiting for {peer} to come back…",
  "phase.restarting": "The connection dropped — reconnecting…",
  "phase.network-failed": "The network could not connect the call. Check your connection, or hang up and call again.",
  "phase.encryption-failed": "The network connected, but the encrypted connection could not be set up. If your codes differ, someone may be intercepting the call — hang up.",

  "code.fresh_peer": "{peer} reconnected; the code changed because a new encrypted connection was made — compare it again.",
  "code.fresh_rejoin": "You reconnected; the code changed because a new encrypted connection was made — compare it again with {peer}.",
  "code.fresh_self": "The connection was rebuilt; the code changed because a new encrypted connection was made — compare it again with {peer}.",

  "ended.hangup_me": "You ended the call.",
  "ended.hangup_peer": "{peer} ended the call.",
  "ended.cancelled_me": "You cancelled the call.",
  "ended.cancelled_peer": "{peer} cancelled the call.",
  "ended.rejected_peer": "{peer} declined the call.",
  "ended.rejected_me": "You declined the call.",
  "ended.missed_caller": "{peer} did not answer.",
  "ended.missed_callee": "You missed a call from {peer}.",
  "ended.busy": "{peer} is on another call.",
  "ended.unavailable": "{peer} is not online right now.",
  "ended.answered_elsewhere": "The call was answered on another of your devices.",
  "ended.left": "{peer} left the call.",
  "ended.connection_lost": "The connection to {peer} was lost.",
  "ended.glare": "You and {peer} called each other at the same time — answer their call instead.",
  "ended.server_shutdown": "The server is restarting. Please call again in a moment.",
  "ended.server_restart": "The call was interrupted by a server restart.",
  "ended.server_error": "The call failed because of a server error. Please call again.",
  "ended.unknown": "The call ended.",
  "ended.someone": "The other person",
  "ended.elsewhere": "The call continues on another of your devices.",
  "ended.gap": "The call with {peer} ended while you were disconnected.",

  "cause.rejected_caller.microphone_denied": "{peer} could not answer: their microphone is blocked.",
  "cause.rejected_caller.microphone_unavailable": "{peer} could not answer: they have no working microphone.",
  "cause.rejected_callee.microphone_denied": "You declined because the microphone is blocked. Allow microphone access for this site in your browser's settings, then ask {peer} to call again.",
  "cause.rejected_callee.microphone_unavailable": "You declined because no microphone is available. Connect a microphone, then ask {peer} to call again.",
  "cause.cancelled_caller.microphone_denied": "You cancelled because the microphone is blocked. Allow microphone access for this site in your browser's settings, then call again.",
  "cause.cancelled_caller.microphone_unavailable": "You cancelled because no microphone is available. Connect a microphone, then call again.",
  "cause.cancelled_callee.microphone_denied": "{peer} cancelled the call: their microphone is blocked.",
  "cause.cancelled_callee.microphone_unavailable": "{peer} cancelled the call: they have no working microphone.",
  "cause.hangup_me.microphone_denied": "The call ended because the microphone is blocked. Allow microphone access for this site in your browser's settings, then call again.",
  "cause.hangup_me.microphone_unavailable": "The call ended because no microphone is available. Connect a microphone, then call again.",
  "cause.hangup_peer.microphone_denied": "{peer} hung up: their microphone is blocked.",
  "cause.hangup_peer.microphone_unavailable": "{peer} hung up: they have no working microphone.",
  "mic.refused_denied": "Your microphone is blocked, so the call was not placed. Allow microphone access for this site in your browser's settings, then call again.",
  "mic.refused_unavailable": "No microphone is available, so the call was not placed. Connect a microphone, then call again.",

  "short.hangup": "ended",
  "short.cancelled": "cancelled",
  "short.rejected": "declined",
  "short.missed": "missed",
  "short.busy": "busy",
  "short.unavailable": "offline",
  "short.answered_elsewhere": "answered elsewhere",
  "short.left": "left",
  "short.connection_lost": "connection lost",
  "short.glare": "crossed calls",
  "short.server_shutdown": "server restart",
  "short.server_restart": "server restart",
  "short.server_error": "server error",
  "short.created": "ringing",
  "short.active": "in progress",
  "history.outgoing": "Outgoing call:",
  "history.incoming": "Incoming call:",

  "notice.offline": "Not connected to the server yet. Please try again in a moment.",
  "notice.dropped_before_call": "The connection dropped before the call was placed. Please call again.",
  "notice.session_ended": "Your session has ended. Please log in again.",
  "notice.signed_out_elsewhere": "You were signed out from another device. Please log in again.",
  "notice.superseded": "Another window took over this page's connection (a duplicated tab?). Reload to connect here again.",
  "notice.unreachable": "Could not reach the server. Check your connection and try again.",
  "notice.self_call": "You cannot call yourself. Enter the username of the person you want to call.",

  "wait.seconds": { one: "Please wait {n} second.", other: "Please wait {n} seconds." },
  "wait.minutes": { one: "Please wait {n} minute.", other: "Please wait {n} minutes." },
  "wait.little": "Please wait a little.",

  // One sentence per server error code (docs/protocol.md).
  "error.unauthorized": "Your session has ended. Please log in again.",
  "error.body_too_large": "That request was too large for the server.",
  "error.bad_request": "The server could not read that request. Please reload the page.",
  "error.bad_message": "The server could not read a message from this page. Please reload the page.",
  "error.invalid_username": "Usernames are 3–32 characters: letters, digits, '_', '.' or '-'.",
  "error.weak_password.short": "That password is too short: use at least 8 characters.",
  "error.weak_password.long": "That password is too long: use at most 128 characters.",
  "error.weak_password.common": "That password is one of the most common ones and easy to guess. Choose another.",
  "error.username_taken": "That username is taken. Choose another, or log in if it is yours.",
  "error.invalid_credentials": "Wrong username or password.",
  "error.too_many_attempts": "Too many failed attempts.",
  "error.invalid_refresh_token": "Your session has ended. Please log in again.",
  "error.not_found": "That was not found; it may have been removed already.",
  "error.method_not_allowed": "The server does not allow that action. Please reload the page.",
  "error.server_busy": "The server is busy right now.",
  "error.unavailable": "The server cannot reach its database right now.",
  "error.internal_error": "Something went wrong on the server. Please try again.",
  "error.forbidden": "That is not allowed from here.",
  "error.hello_timeout": "The connection to the server took too long to start. Reconnecting…",
  "error.hello_required": "The connection to the server started wrongly. Reconnecting…",
  "error.invalid_token": "Your sign-in is not valid any more. Please log in again.",
  "error.token_expired": "Your sign-in expired. Renewing it…",
  "error.session_revoked": "This device was signed out. Please log in again.",
  "error.too_many_connections": "This account is open in too many windows or devices. Close some, then reload.",
  "error.busy_self": "You are already in a call. End it before starting another.",
  "error.user_not_found": "There is no user with that name.",
  "error.not_participant": "You are not part of that call.",
  "error.call_not_active": "The call is not connected yet.",
  "error.call_not_ringing": "That call is no longer ringing.",
  "error.unknown_call": "That call has already ended.",
  "error.rate_limited": "Too many calls or messages in a short time.",
  "error.persistence_unavailable": "Calls are temporarily unavailable while the server catches up. Please try again in a minute.",
  "error.resume_gap": "Some messages were lost while you were disconnected; the call is being reconnected.",
  "error.http_error": "The server answered with an error. Please try again.",
};

const RU = {
  "lang.switch": "English",
  "lang.switch_label": "Switch the language to English",
  "link.online": "в сети",
  "link.reconnecting": "переподключение",
  "link.offline": "не в сети",
  "notice.insecure_context": "Эта страница открыта не по HTTPS, поэтому браузер не даст ей доступ к микрофону и шифрованию звонка. Откройте её по адресу https:// — или попросите владельца сервера включить HTTPS.",
  "account.label": "Аккаунт",
  "account.logout": "Выйти",
  "title.base": "callsignal",
  "title.ringing": "Звонит {peer}",
  "title.calling": "Вызов: {peer}…",
  "title.incall": "Разговор: {peer}",

  "auth.title": "Приватные аудиозвонки",
  "auth.lead": "Сквозное шифрование между браузерами. Сервер вас не слышит.",
  "auth.username": "Имя пользователя",
  "auth.password": "Пароль",
  "auth.hint": "Не короче 8 символов. Самые распространённые пароли не принимаются.",
  "auth.login": "Войти",
  "auth.register": "Создать аккаунт",

  "home.call_title": "Позвонить",
  "home.call_to": "Имя пользователя, которому звоните",
  "home.call_placeholder": "имя пользователя",
  "home.call": "Позвонить",
  "home.history": "Недавние звонки",
  "home.refresh": "Обновить",
  "home.refresh_history": "Обновить недавние звонки",
  "home.refresh_sessions": "Обновить список устройств",
  "home.sessions": "Устройства со входом в аккаунт",
  "home.no_calls": "Звонков пока нет.",
  "home.end_elsewhere": "Завершить тот звонок",
  "home.elsewhere": "У вас идёт звонок с {peer} в другом окне или на другом устройстве.",

  "notify.ask": "Показывать уведомление о звонке, когда эта вкладка в фоне?",
  "notify.on": "Включить уведомления",
  "notify.later": "Не сейчас",
  "notify.denied": "Уведомления для этого сайта запрещены. Пока вкладка открыта, входящий звонок всё равно будет звонить.",
  "notify.title": "Входящий звонок",
  "notify.body": "Вам звонит {peer}",

  "sessions.this": "Это устройство",
  "sessions.unknown": "Неизвестное устройство",
  "sessions.device": "{browser}, {os}",
  "sessions.browser_only": "{browser}",
  "sessions.os_only": "Браузер, {os}",
  "sessions.signed_in": "Вход: {when}",
  "sessions.last": "активность: {when}",
  "sessions.from": "адрес {ip}",
  "sessions.sign_out": "Выйти",
  "sessions.sign_out_label": "Выйти на устройстве {device} (вход: {when})",
  "sessions.sign_out_others": "Выйти на всех других устройствах",
  "sessions.signed_out_others": {
    one: "Выполнен выход на {n} другом устройстве.",
    few: "Выполнен выход на {n} других устройствах.",
    many: "Выполнен выход на {n} других устройствах.",
    other: "Выполнен выход на {n} других устройствах.",
  },
  "sessions.none_other": "На других устройствах вход не выполнен.",

  "out.calling": "Вызов…",
  "out.ringing": "Идут гудки…",
  "out.mic": "Ждём доступа к микрофону…",
  "out.cancel": "Отменить",
  "in.label": "Входящий звонок",
  "in.accept": "Ответить",
  "in.decline": "Отклонить",
  "in.mic": "Включаем микрофон…",
  "in.connecting": "Соединяем…",
  "in.offline": "Нет связи с сервером. Попробуйте ещё раз через минуту.",

  "call.duration": "Длительность звонка",
  "call.peer_reconnecting": "{peer}: переподключение…",
  "call.you": "Вы",
  "call.them": "Собеседник",
  "call.mic_level": "Уровень вашего микрофона",
  "call.their_level": "Громкость собеседника",
  "call.verify": "Код проверки",
  "call.verify_hint": "Прочитайте его вслух: если у собеседника другой код, звонок кто-то перехватывает.",
  "call.mute": "Выключить микрофон",
  "call.unmute": "Включить микрофон",
  "call.muted": "Ваш микрофон выключен — собеседник вас не слышит.",
  "call.hangup": "Завершить",
  "call.mic": "Микрофон",
  "call.mic_default": "Микрофон по умолчанию",
  "call.mic_n": "Микрофон {n}",
  "call.mic_failed": "Не удалось переключиться на этот микрофон; работает прежний.",
  "call.quality": "Связь",
  "call.quality_good": "хорошая",
  "call.quality_fair": "средняя",
  "call.quality_poor": "плохая",
  "call.quality_unknown": "измеряем…",
  "call.quality_detail": "задержка {rtt} мс, потери {loss}%",
  "call.quality_warn": "Связь плохая: голос может прерываться или запаздывать. Помогает подойти ближе к роутеру Wi-Fi или приостановить загрузки.",

  "phase.connecting": "соединение…",
  "phase.connected": "соединено · зашифровано",
  "phase.interrupted": "Связь прервалась — восстанавливаем…",
  "phase.waiting": "Ждём, пока {peer} вернётся…",
  "phase.restarting": "Соединение оборвалось — восстанавливаем…",
  "phase.network-failed": "Сеть не смогла соединить звонок. Проверьте подключение или завершите звонок и позвоните снова.",
  "phase.encryption-failed": "Сеть соединилась, но зашифрованное соединение установить не удалось. Если ваши коды различаются, звонок могут перехватывать — завершите его.",

  "code.fresh_peer": "{peer}: повторное подключение; код изменился, потому что создано новое зашифрованное соединение — сверьте его ещё раз.",
  "code.fresh_rejoin": "Вы переподключились; код изменился, потому что создано новое зашифрованное соединение — сверьте его с {peer} ещё раз.",
  "code.fresh_self": "Соединение пересоздано; код изменился, потому что создано новое зашифрованное соединение — сверьте его с {peer} ещё раз.",

  "ended.hangup_me": "Вы завершили звонок.",
  "ended.hangup_peer": "Собеседник {peer} завершил звонок.",
  "ended.cancelled_me": "Вы отменили звонок.",
  "ended.cancelled_peer": "Звонок от {peer} отменён.",
  "ended.rejected_peer": "{peer}: звонок отклонён.",
  "ended.rejected_me": "Вы отклонили звонок.",
  "ended.missed_caller": "{peer} не ответил(а).",
  "ended.missed_callee": "Пропущенный звонок от {peer}.",
  "ended.busy": "{peer} сейчас разговаривает с кем-то другим.",
  "ended.unavailable": "{peer} сейчас не в сети.",
  "ended.answered_elsewhere": "На звонок ответили на другом вашем устройстве.",
  "ended.left": "{peer} покинул(а) звонок.",
  "ended.connection_lost": "Связь с {peer} потеряна.",
  "ended.glare": "Вы с {peer} позвонили друг другу одновременно — ответьте на входящий звонок.",
  "ended.server_shutdown": "Сервер перезапускается. Позвоните снова через минуту.",
  "ended.server_restart": "Звонок прервался из-за перезапуска сервера.",
  "ended.server_error": "Звонок прервался из-за ошибки сервера. Позвоните снова.",
  "ended.unknown": "Звонок завершён.",
  "ended.someone": "Собеседник",
  "ended.elsewhere": "Звонок продолжается на другом вашем устройстве.",
  "ended.gap": "Звонок с {peer} завершился, пока вы были не в сети.",

  "cause.rejected_caller.microphone_denied": "{peer} не может ответить: доступ к микрофону запрещён.",
  "cause.rejected_caller.microphone_unavailable": "{peer} не может ответить: нет работающего микрофона.",
  "cause.rejected_callee.microphone_denied": "Вы отклонили звонок, потому что доступ к микрофону запрещён. Разрешите его для этого сайта в настройках браузера и попросите {peer} позвонить снова.",
  "cause.rejected_callee.microphone_unavailable": "Вы отклонили звонок, потому что микрофон недоступен. Подключите микрофон и попросите {peer} позвонить снова.",
  "cause.cancelled_caller.microphone_denied": "Вы отменили звонок, потому что доступ к микрофону запрещён. Разрешите его для этого сайта в настройках браузера и позвоните снова.",
  "cause.cancelled_caller.microphone_unavailable": "Вы отменили звонок, потому что микрофон недоступен. Подключите микрофон и позвоните снова.",
  "cause.cancelled_callee.microphone_denied": "Звонок от {peer} отменён: у собеседника запрещён доступ к микрофону.",
  "cause.cancelled_callee.microphone_unavailable": "Звонок от {peer} отменён: у собеседника нет работающего микрофона.",
  "cause.hangup_me.microphone_denied": "Звонок завершён, потому что доступ к микрофону запрещён. Разрешите его для этого сайта в настройках браузера и позвоните снова.",
  "cause.hangup_me.microphone_unavailable": "Звонок завершён, потому что микрофон недоступен. Подключите микрофон и позвоните снова.",
  "cause.hangup_peer.microphone_denied": "Собеседник {peer} завершил звонок: доступ к микрофону запрещён.",
  "cause.hangup_peer.microphone_unavailable": "Собеседник {peer} завершил звонок: нет работающего микрофона.",
  "mic.refused_denied": "Доступ к микрофону запрещён, поэтому звонок не состоялся. Разрешите его для этого сайта в настройках браузера и позвоните снова.",
  "mic.refused_unavailable": "Микрофон недоступен, поэтому звонок не состоялся. Подключите микрофон и позвоните снова.",

  "short.hangup": "завершён",
  "short.cancelled": "отменён",
  "short.rejected": "отклонён",
  "short.missed": "пропущен",
  "short.busy": "занято",
  "short.unavailable": "не в сети",
  "short.answered_elsewhere": "отвечен на другом устройстве",
  "short.left": "собеседник вышел",
  "short.connection_lost": "связь потеряна",
  "short.glare": "встречные звонки",
  "short.server_shutdown": "перезапуск сервера",
  "short.server_restart": "перезапуск сервера",
  "short.server_error": "ошибка сервера",
  "short.created": "вызов",
  "short.active": "идёт",
  "history.outgoing": "Исходящий звонок:",
  "history.incoming": "Входящий звонок:",

  "notice.offline": "Нет связи с сервером. Попробуйте ещё раз через минуту.",
  "notice.dropped_before_call": "Связь оборвалась до того, как звонок начался. Позвоните снова.",
  "notice.session_ended": "Сеанс завершён. Войдите снова.",
  "notice.signed_out_elsewhere": "Выход выполнен с другого устройства. Войдите снова.",
  "notice.superseded": "Соединение этой страницы перешло в другое окно (дублированная вкладка?). Обновите страницу, чтобы подключиться здесь.",
  "notice.unreachable": "Не удалось связаться с сервером. Проверьте подключение и попробуйте снова.",
  "notice.self_call": "Нельзя позвонить самому себе. Введите имя того, кому хотите позвонить.",

  "wait.seconds": { one: "Подождите {n} секунду.", few: "Подождите {n} секунды.", many: "Подождите {n} секунд.", other: "Подождите {n} секунды." },
  "wait.minutes": { one: "Подождите {n} минуту.", few: "Подождите {n} минуты.", many: "Подождите {n} минут.", other: "Подождите {n} минуты." },
  "wait.little": "Подождите немного.",

  "error.unauthorized": "Сеанс завершён. Войдите снова.",
  "error.body_too_large": "Запрос слишком велик для сервера.",
  "error.bad_request": "Сервер не понял запрос. Обновите страницу.",
  "error.bad_message": "Сервер не понял сообщение от этой страницы. Обновите страницу.",
  "error.invalid_username": "Имя пользователя — от 3 до 32 символов: латинские буквы, цифры, «_», «.» или «-».",
  "error.weak_password.short": "Пароль слишком короткий: нужно не меньше 8 символов.",
  "error.weak_password.long": "Пароль слишком длинный: не больше 128 символов.",
  "error.weak_password.common": "Это один из самых распространённых паролей, его легко угадать. Выберите другой.",
  "error.username_taken": "Это имя уже занято. Выберите другое или войдите, если оно ваше.",
  "error.invalid_credentials": "Неверное имя пользователя или пароль.",
  "error.too_many_attempts": "Слишком много неудачных попыток.",
  "error.invalid_refresh_token": "Сеанс завершён. Войдите снова.",
  "error.not_found": "Не найдено; возможно, это уже удалено.",
  "error.method_not_allowed": "Сервер не разрешает это действие. Обновите страницу.",
  "error.server_busy": "Сервер сейчас перегружен.",
  "error.unavailable": "Сервер сейчас не может связаться со своей базой данных.",
  "error.internal_error": "На сервере что-то пошло не так. Попробуйте ещё раз.",
  "error.forbidden": "Отсюда это не разрешено.",
  "error.hello_timeout": "Соединение с сервером устанавливалось слишком долго. Переподключаемся…",
  "error.hello_required": "Соединение с сервером началось неправильно. Переподключаемся…",
  "error.invalid_token": "Вход больше не действителен. Войдите снова.",
  "error.token_expired": "Срок входа истёк. Обновляем…",
  "error.session_revoked": "На этом устройстве выполнен выход. Войдите снова.",
  "error.too_many_connections": "Аккаунт открыт в слишком многих окнах или на слишком многих устройствах. Закройте лишние и обновите страницу.",
  "error.busy_self": "Вы уже разговариваете. Завершите этот звонок, прежде чем начать новый.",
  "error.user_not_found": "Пользователя с таким именем нет.",
  "error.not_participant": "Вы не участвуете в этом звонке.",
  "error.call_not_active": "Звонок ещё не соединён.",
  "error.call_not_ringing": "Этот звонок уже не звонит.",
  "error.unknown_call": "Этот звонок уже завершён.",
  "error.rate_limited": "Слишком много звонков или сообщений за короткое время.",
  "error.persistence_unavailable": "Звонки временно недоступны, пока сервер догоняет записи. Попробуйте через минуту.",
  "error.resume_gap": "Пока вы были не в сети, часть сообщений потерялась; звонок переподключается.",
  "error.http_error": "Сервер ответил ошибкой. Попробуйте ещё раз.",
};

const DICTS = { en: EN, ru: RU };

function initialLang() {
  const saved = localStorage.getItem(LANG_KEY);
  if (LANGS.includes(saved)) return saved;
  const wanted = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  for (const l of wanted) {
    const base = String(l).toLowerCase().split("-")[0];
    if (LANGS.includes(base)) return base;
  }
  return "en";
}

let lang = initialLang();
/** Elements whose text came from say(): re-rendered on a language switch. */
const spoken = new Set();
const listeners = [];

export function currentLang() {
  return lang;
}

/** Whether `key` exists in both languages (for tests and checks). */
export function has(key) {
  return key in EN && key in RU;
}

/** The text for `key` with `{name}` placeholders filled; `n` selects a plural form. */
export function t(key, params = {}) {
  const entry = DICTS[lang][key] ?? EN[key];
  if (entry === undefined) {
    console.warn("missing string", key);
    return key;
  }
  const text = typeof entry === "object" ? plural(lang, params.n ?? 0, entry) : entry;
  return text.replace(/\{(\w+)\}/g, (m, k) => (k in params ? String(params[k]) : m));
}

/** A message to show later: a key and its parameters (rendered in the current language). */
export function msg(key, params = {}) {
  return { key, params };
}

/** Renders a msg(), a list of them (joined by spaces), or null. */
export function render(m) {
  if (!m) return "";
  if (Array.isArray(m)) return m.map(render).filter(Boolean).join(" ");
  return t(m.key, m.params);
}

/** Sets an element's text from a msg() (or clears it) and keeps it current across switches. */
export function say(el, m) {
  el._msg = m || null;
  el.textContent = render(m);
  if (m) spoken.add(el);
  else spoken.delete(el);
}

/** Translates the static text of the page (data-i18n, data-i18n-label, data-i18n-placeholder). */
export function applyStatic(root = document) {
  document.documentElement.lang = lang;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.setAttribute("placeholder", t(el.dataset.i18nPlaceholder));
}

/** Switches the language, remembers the choice and re-renders everything. */
export function setLang(next) {
  if (!LANGS.includes(next)) return;
  lang = next;
  localStorage.setItem(LANG_KEY, next);
  applyStatic();
  for (const el of spoken) {
    if (el.isConnected) el.textContent = render(el._msg);
    else spoken.delete(el);
  }
  for (const f of listeners) f(next);
}

/** Calls `f(lang)` after every switch (for text built from data, like lists). */
export function onLangChange(f) {
  listeners.push(f);
}

/** Dates and times in the page's language. */
export function formatTime(iso) {
  return new Date(iso).toLocaleString(lang === "ru" ? "ru-RU" : "en", { dateStyle: "medium", timeStyle: "short" });
}

/** Keys present in one language but not the other (a test asserts this is empty). */
export function missingKeys() {
  return [...Object.keys(EN).filter((k) => !(k in RU)), ...Object.keys(RU).filter((k) => !(k in EN))];
}
