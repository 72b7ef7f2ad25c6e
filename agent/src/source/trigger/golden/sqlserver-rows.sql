-- lockstep triggers install (sqlserver, capture = "rows")

IF OBJECT_ID(N'lockstep_changes', N'U') IS NULL
CREATE TABLE [lockstep_changes] (
    [seq] BIGINT IDENTITY(1,1) NOT NULL PRIMARY KEY,
    [tbl] NVARCHAR(128) NOT NULL,
    [op] CHAR(1) NOT NULL,
    [pk] NVARCHAR(MAX) NOT NULL,
    [before] NVARCHAR(MAX) NULL,
    [after] NVARCHAR(MAX) NULL,
    [changed_at] DATETIME2(6) NOT NULL DEFAULT SYSUTCDATETIME(),
    [origin] NVARCHAR(64) NULL
)
GO

CREATE OR ALTER TRIGGER [lockstep_appointments] ON [appointments] AFTER INSERT, UPDATE, DELETE AS
BEGIN
    SET NOCOUNT ON;
    INSERT INTO [lockstep_changes] ([tbl], [op], [pk], [before], [after], [origin])
    SELECT N'appointments',
           CASE WHEN d.[id] IS NULL THEN 'c' WHEN i.[id] IS NULL THEN 'd' ELSE 'u' END,
           CASE WHEN i.[id] IS NULL THEN (SELECT d.[id] AS [id] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) ELSE (SELECT i.[id] AS [id] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) END,
           CASE WHEN d.[id] IS NULL THEN NULL ELSE (SELECT d.[id] AS [id], d.[clinic] AS [clinic], d.[fee] AS [fee] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) END,
           CASE WHEN i.[id] IS NULL THEN NULL ELSE (SELECT i.[id] AS [id], i.[clinic] AS [clinic], i.[fee] AS [fee] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) END,
           CAST(SESSION_CONTEXT(N'lockstep.origin') AS NVARCHAR(64))
    FROM inserted i FULL OUTER JOIN deleted d ON i.[id] = d.[id];
END
GO

CREATE OR ALTER TRIGGER [lockstep_clinics] ON [clinics] AFTER INSERT, UPDATE, DELETE AS
BEGIN
    SET NOCOUNT ON;
    INSERT INTO [lockstep_changes] ([tbl], [op], [pk], [before], [after], [origin])
    SELECT N'clinics',
           CASE WHEN d.[region] IS NULL THEN 'c' WHEN i.[region] IS NULL THEN 'd' ELSE 'u' END,
           CASE WHEN i.[region] IS NULL THEN (SELECT d.[region] AS [region], d.[code] AS [code] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) ELSE (SELECT i.[region] AS [region], i.[code] AS [code] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) END,
           CASE WHEN d.[region] IS NULL THEN NULL ELSE (SELECT d.[region] AS [region], d.[code] AS [code], d.[name] AS [name] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) END,
           CASE WHEN i.[region] IS NULL THEN NULL ELSE (SELECT i.[region] AS [region], i.[code] AS [code], i.[name] AS [name] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) END,
           CAST(SESSION_CONTEXT(N'lockstep.origin') AS NVARCHAR(64))
    FROM inserted i FULL OUTER JOIN deleted d ON i.[region] = d.[region] AND i.[code] = d.[code];
END
GO

CREATE OR ALTER TRIGGER [lockstep_scans] ON [scans] AFTER INSERT, UPDATE, DELETE AS
BEGIN
    SET NOCOUNT ON;
    INSERT INTO [lockstep_changes] ([tbl], [op], [pk], [before], [after], [origin])
    SELECT N'scans',
           CASE WHEN d.[id] IS NULL THEN 'c' WHEN i.[id] IS NULL THEN 'd' ELSE 'u' END,
           CASE WHEN i.[id] IS NULL THEN (SELECT d.[id] AS [id] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) ELSE (SELECT i.[id] AS [id] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) END,
           CASE WHEN d.[id] IS NULL THEN NULL ELSE (SELECT d.[id] AS [id], d.[image] AS [image] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) END,
           CASE WHEN i.[id] IS NULL THEN NULL ELSE (SELECT i.[id] AS [id], i.[image] AS [image] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES) END,
           CAST(SESSION_CONTEXT(N'lockstep.origin') AS NVARCHAR(64))
    FROM inserted i FULL OUTER JOIN deleted d ON i.[id] = d.[id];
END
GO

-- lockstep triggers uninstall

IF OBJECT_ID(N'lockstep_appointments', N'TR') IS NOT NULL DROP TRIGGER [lockstep_appointments]
GO

IF OBJECT_ID(N'lockstep_clinics', N'TR') IS NOT NULL DROP TRIGGER [lockstep_clinics]
GO

IF OBJECT_ID(N'lockstep_scans', N'TR') IS NOT NULL DROP TRIGGER [lockstep_scans]
GO

-- then, only when this counts no trigger left (of any source):
-- SELECT count(*) FROM sys.triggers WHERE parent_class = 1 AND name LIKE 'lockstep!_%' ESCAPE '!'

IF OBJECT_ID(N'lockstep_changes', N'U') IS NOT NULL DROP TABLE [lockstep_changes]
GO

