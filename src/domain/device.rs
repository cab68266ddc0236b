//! A readable device name from a `User-Agent` string ("Chrome 156 on Linux", "Safari on
//! iPhone") for the sessions list. A small table of well-known tokens, not a full parser: the
//! name only helps a person recognise their own devices, it authorises nothing.

/// Browser and operating system as read from a `User-Agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The browser with its major version where it is meaningful ("Chrome 156", "Safari").
    pub browser: Option<String>,
    /// The operating system or device family ("Linux", "iPhone", "Android").
    pub os: Option<String>,
}

/// Browser tokens, most specific first: Edge, Opera, Yandex and Samsung Internet also say
/// "Chrome/" and "Safari/", Chrome also says "Safari/", so the first match wins.
/// (token, name, whether to show the major version after the token)
const BROWSERS: &[(&str, &str, bool)] = &[
    ("EdgA/", "Edge", true),
    ("EdgiOS/", "Edge", true),
    ("Edg/", "Edge", true),
    ("OPR/", "Opera", true),
    ("OPiOS/", "Opera", true),
    ("YaBrowser/", "Yandex Browser", true),
    ("SamsungBrowser/", "Samsung Internet", true),
    ("FxiOS/", "Firefox", true),
    ("Firefox/", "Firefox", true),
    ("CriOS/", "Chrome", true),
    ("HeadlessChrome/", "Headless Chrome", true),
    ("Chromium/", "Chromium", true),
    ("Chrome/", "Chrome", true),
    // Safari's own version sits in "Version/", and people know it by its name alone.
    ("Safari/", "Safari", false),
];

/// Operating systems, most specific first: iOS browsers say "like Mac OS X", Android says
/// "Linux", ChromeOS says "X11".
const SYSTEMS: &[(&str, &str)] = &[
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Android", "Android"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Macintosh", "macOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
];

impl Device {
    /// Reads browser and system from a `User-Agent`; unknown parts stay `None`.
    pub fn from_user_agent(ua: &str) -> Device {
        let browser = BROWSERS.iter().find_map(|(token, name, versioned)| {
            let at = ua.find(token)?;
            let major: String = ua[at + token.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some(if *versioned && !major.is_empty() {
                format!("{name} {major}")
            } else {
                (*name).to_owned()
            })
        });
        let os = SYSTEMS
            .iter()
            .find(|(token, _)| ua.contains(token))
            .map(|(_, name)| (*name).to_owned());
        Device { browser, os }
    }

    /// "Chrome 156 on Linux", "Firefox", "Browser on Android", "Unknown device".
    pub fn name(&self) -> String {
        match (&self.browser, &self.os) {
            (Some(b), Some(os)) => format!("{b} on {os}"),
            (Some(b), None) => b.clone(),
            (None, Some(os)) => format!("Browser on {os}"),
            (None, None) => "Unknown device".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Device;

    fn name(ua: &str) -> String {
        Device::from_user_agent(ua).name()
    }

    #[test]
    fn reads_the_common_browsers_and_systems() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36",
                "Chrome 156 on Linux",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                "Safari on iPhone",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
                "Safari on macOS",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
                "Edge 124 on Windows",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
                "Firefox 126 on Windows",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.6422.53 Mobile Safari/537.36",
                "Chrome 125 on Android",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/125.0.6422.80 Mobile/15E148 Safari/604.1",
                "Chrome 125 on iPhone",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 YaBrowser/24.4.0.0 Safari/537.36",
                "Yandex Browser 24 on Windows",
            ),
            (
                "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
                "Samsung Internet 25 on Android",
            ),
            (
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                "Chrome 124 on ChromeOS",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 OPR/110.0.0.0",
                "Opera 110 on Windows",
            ),
        ];
        for (ua, want) in cases {
            assert_eq!(name(ua), want, "{ua}");
        }
    }

    #[test]
    fn unknown_parts_say_so() {
        assert_eq!(name("reqwest/0.12"), "Unknown device");
        assert_eq!(name("curl/8.5.0"), "Unknown device");
        assert_eq!(name(""), "Unknown device");
        assert_eq!(
            name("Mozilla/5.0 (Linux; Android 14) SomeApp/1.0"),
            "Browser on Android"
        );
        assert_eq!(name("Mozilla/5.0 Firefox/"), "Firefox");
    }
}
