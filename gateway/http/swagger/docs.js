// Renders /openapi.json with the vendored Swagger UI (no CDN, no inline script: the page's
// Content-Security-Policy allows only this origin). The key typed into "Authorize" stays in
// this page's memory: persistAuthorization is off, so no API key is kept in localStorage.
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    displayOperationId: true,
    displayRequestDuration: true,
    filter: true,
    persistAuthorization: false,
    tryItOutEnabled: false,
    validatorUrl: null,
  });
});
